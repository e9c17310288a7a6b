// The two-host QEMU lab: network namespaces `ferry-a`/`ferry-b` joined by a shapeable migration
// link, a Temporal dev server, an inventory, the controller worker and a node worker inside each
// namespace, and guests booted on the hosts. Used by the demo, the end-to-end tests and the
// benchmarks, so all three exercise the same deployment.
import { spawn } from 'node:child_process';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Client } from '@temporalio/client';
import { ensureLabNetwork, labNodes as labNodeMap, runInNamespace, shapeMigrationLink, LAB_CONTROL_ADDRESS as LAB_TEMPORAL_IP } from './lab-network.js';

const labNodes = Object.values(labNodeMap);
import { startDevServer } from './temporal-dev.js';
import { forwardTcp } from './tcp-forward.js';
import { ensureGuestImage, guestAppend } from './guest-image.js';
import { openInventory, type Inventory } from '../inventory/index.js';
import { loadConfig } from '../config/index.js';
import { connectClient } from '../workers/connection.js';
import type { InstanceSpec } from '../shared/instance.js';
import { migrationWorkflowId } from '../shared/names.js';
import { labWorkers, makeDisk, nodeScript, repoRoot, runToEnd, waitForPollers, type Launch } from './lab-common.js';

export { runToEnd, waitForPollers };

const MiB = 1024 * 1024;

export interface LabOptions {
  dir?: string;
  /** Shape the migration link (Mbit/s); undefined = unshaped. */
  linkMbit?: number;
  temporalPort?: number;
  log?: (line: string) => void;
  /** The nodes' hypervisor: QEMU processes Ferry runs (default), or libvirt (libvirt-lab.ts). */
  hypervisor?: 'qemu' | 'libvirt';
  /** How a node's worker is started (default: inside the node's network namespace). */
  launchOnNode?: (node: string) => Launch;
  /** A node's own `node:` config section (e.g. its libvirt pathMap), in a config file of its own. */
  nodeSettings?: Record<string, Record<string, unknown>>;
}

export interface GuestOptions {
  id: string;
  node?: string;
  memoryMiB?: number;
  diskMiB?: number;
  /** Records per second the workload writes. */
  rate?: number;
  /** Heavy writer: KiB per write and the region (MiB) it rotates through. */
  burstKiB?: number;
  spanMiB?: number;
  servicePort?: number;
  /** Fill the disk with an ext4 file system built from this directory (real content). */
  contentDir?: string;
  /** Or fill its first MiB with random (incompressible) bytes. */
  randomMiB?: number;
}

export type Lab = Awaited<ReturnType<typeof startQemuLab>>;

/** The lab controller's `defaults.maxRounds`. */
export const LAB_MAX_ROUNDS = 12;
/** Node workers' metrics port (on each node's own address; the SDK's exporter on the next port). */
const LAB_METRICS_PORT = 9464;

export async function startQemuLab(opts: LabOptions = {}) {
  const dir = opts.dir ?? '/var/tmp/ferry-lab';
  const log = opts.log ?? (() => undefined);
  await mkdir(join(dir, 'logs'), { recursive: true });

  log('lab network: namespaces ferry-a, ferry-b and the migration link');
  await ensureLabNetwork();
  await shapeMigrationLink(opts.linkMbit ?? null);

  log('guest image: Debian kernel + busybox initramfs');
  const image = await ensureGuestImage(join(repoRoot, '.cache/guest'));

  const port = opts.temporalPort ?? 7233;
  log(`temporal dev server on 127.0.0.1:${port}, for the namespaces on ${LAB_TEMPORAL_IP}:${port} (web UI http://127.0.0.1:${port + 1000})`);
  // A fresh history too: workflows of an earlier run would hold the instance ids of this one.
  for (const f of ['', '-wal', '-shm']) await rm(join(dir, 'temporal.db') + f, { force: true });
  const temporal = await startDevServer({ ip: '127.0.0.1', port, uiPort: port + 1000, dbFile: join(dir, 'temporal.db'), logFile: join(dir, 'logs/temporal.log') });
  const forward = await forwardTcp({ host: LAB_TEMPORAL_IP, port }, { host: '127.0.0.1', port });
  const workerTemporalAddress = `${LAB_TEMPORAL_IP}:${port}`;

  // A lab starts from an empty inventory: the instances of an earlier run are gone with its QEMUs.
  const inventoryPath = join(dir, 'inventory.db');
  for (const f of ['', '-wal', '-shm']) await rm(inventoryPath + f, { force: true });
  const configPath = join(dir, 'ferry.yaml');
  const baseConfig = {
    temporal: { address: workerTemporalAddress, namespace: 'default' },
    inventory: { path: inventoryPath },
    // Not the built-in 8: a run shows it took the controller's config defaults (a UI start too).
    defaults: { maxRounds: LAB_MAX_ROUNDS },
    log: { level: 'info' },
  };
  await writeFile(configPath, stringify(baseConfig));
  const nodeConfigPath = (node: string) => (opts.nodeSettings?.[node] ? join(dir, `ferry-${node}.yaml`) : configPath);
  for (const [node, settings] of Object.entries(opts.nodeSettings ?? {})) await writeFile(nodeConfigPath(node), stringify({ ...baseConfig, node: settings }));
  const inventory: Inventory = openInventory(inventoryPath);
  for (const n of labNodes) {
    if (!inventory.findNode(n.name)) {
      inventory.addNode({
        name: n.name,
        hypervisor: opts.hypervisor ?? 'qemu',
        controlAddress: n.mgmtAddress,
        dataAddress: n.dataAddress,
        capacity: { vcpus: 16, memoryMiB: 8192, diskBytes: 64 * 1024 * MiB },
      });
    }
  }

  const cfg = loadConfig({ file: configPath, env: {} });
  cfg.temporal.address = temporal.address;
  const client: Client = await connectClient(cfg);

  const nodeStateDir = (node: string) => join(dir, 'nodes', node);
  const workers = labWorkers(join(dir, 'logs'));

  const lab = {
    dir,
    temporal,
    client,
    inventory,
    configPath,
    nodes: labNodes,
    image,
    nodeStateDir,

    startController() {
      return workers.start('controller', ['worker', '--controller'], { FERRY_CONFIG: configPath });
    },
    startNodeWorker(name: string) {
      const n = labNodes.find((x) => x.name === name);
      if (!n) throw new Error(`no lab node ${name}`);
      return workers.start(
        name,
        ['worker', '--node', name],
        {
          FERRY_CONFIG: nodeConfigPath(name),
          FERRY_NODE: name,
          FERRY_DATA_ADDRESS: n.dataAddress,
          FERRY_STATE_DIR: nodeStateDir(name),
          // Prometheus metrics on the node's own address (each node has its namespace): lab.metricsUrl().
          FERRY_METRICS_ADDRESS: `${n.mgmtAddress}:${LAB_METRICS_PORT}`,
          FERRY_HYPERVISOR: opts.hypervisor ?? 'qemu',
        },
        opts.launchOnNode?.(name) ?? ((cmd, args, o) => runInNamespace(n.netns, cmd, args, o)),
      );
    },
    async startWorkers() {
      lab.startController();
      for (const n of labNodes) lab.startNodeWorker(n.name);
      await waitForPollers(client, ['ferry-control', ...labNodes.map((n) => `ferry-node-${n.name}`)]);
    },
    /** Kills a worker the hard way (SIGKILL), as a crash would. */
    killWorker(name: string) {
      return workers.stop(name, 'SIGKILL');
    },
    stopWorker: workers.stop,

    /** Creates a disk, boots the guest on its node and registers it in the inventory. */
    async bootGuest(g: GuestOptions): Promise<InstanceSpec> {
      const nodeName = g.node ?? labNodes[0]!.name;
      const n = labNodes.find((x) => x.name === nodeName)!;
      const diskBytes = (g.diskMiB ?? 64) * MiB;
      const stateDir = nodeStateDir(nodeName);
      const diskPath = join(stateDir, 'disks', `${g.id}.raw`);
      await mkdir(join(stateDir, 'disks'), { recursive: true });
      await rm(diskPath, { force: true });
      await makeDisk(diskPath, diskBytes, g.contentDir, g.randomMiB);
      // Records go in the last quarter of the disk, the heavy writer just below them.
      const recbase = Math.floor((diskBytes / MiB) * 0.75);
      const spec: InstanceSpec = {
        id: g.id,
        hypervisor: 'qemu',
        vcpus: 1,
        memoryMiB: g.memoryMiB ?? 128,
        disks: [{ vdev: 'vda', kind: 'file', path: diskPath, format: 'raw', bytes: diskBytes }],
        boot: {
          kernel: image.kernel,
          initrd: image.initrd,
          append: guestAppend({ rate: g.rate ?? 5, recbase, burst: g.burstKiB, span: g.spanMiB, spanbase: g.spanMiB ? Math.max(1, recbase - g.spanMiB) : undefined }),
        },
        servicePort: g.servicePort ?? 17000 + Math.floor(Math.random() * 1000),
        startedBy: 'ferry',
      };
      const [cmd, ...rest] = nodeScript('boot-guest');
      await runToEnd(runInNamespace(n.netns, cmd!, [...rest, JSON.stringify(spec)], { env: { ...process.env, FERRY_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] }), `boot ${g.id} on ${nodeName}`);
      inventory.addInstance({ spec, host: nodeName });
      return spec;
    },

    /** Kills a guest wherever it runs and forgets it: its QEMU, state and disk on both nodes. */
    async destroyGuest(spec: InstanceSpec) {
      // A migration still running (a test that failed half-way) would hold the instance.
      await client.workflow.getHandle(migrationWorkflowId(spec.id)).terminate('lab: guest destroyed').catch(() => undefined);
      for (const r of inventory.listReservations({ live: true })) if (r.instanceId === spec.id) inventory.release(r.migrationId);
      await runToEnd(spawn('pkill', ['-KILL', '-f', `qemu-system-x86_64.*${dir}/nodes/[^/]+/${spec.id}/`], { stdio: 'ignore' }), 'pkill').catch(() => undefined);
      for (const n of labNodes) {
        await rm(join(nodeStateDir(n.name), spec.id), { recursive: true, force: true });
        await rm(join(nodeStateDir(n.name), 'disks', `${spec.id}.raw`), { force: true });
      }
      inventory.removeInstance(spec.id);
    },

    /** A node worker's Prometheus endpoint, reachable from the root namespace. */
    metricsUrl(node: string) {
      const n = labNodes.find((x) => x.name === node)!;
      return `http://${n.mgmtAddress}:${LAB_METRICS_PORT}/metrics`;
    },

    /** Where the guest's request port answers from the root namespace, on each node. */
    serviceAddresses(spec: InstanceSpec) {
      return labNodes.map((n) => ({ node: n.name, host: n.mgmtAddress, port: spec.servicePort! }));
    },

    /** Stops the workers and Temporal; with `killGuests`, also every QEMU of this lab. */
    async close(o: { killGuests?: boolean } = {}) {
      await workers.stopAll();
      // QEMUs run detached (they outlive workers by design); their command lines name the lab dir.
      if (o.killGuests !== false) await runToEnd(spawn('pkill', ['-KILL', '-f', `qemu-system-x86_64.*${dir}/`], { stdio: 'ignore' }), 'pkill').catch(() => undefined);
      await client.connection.close().catch(() => undefined);
      await forward.close();
      inventory.close();
      await temporal.stop();
    },
  };
  return lab;
}

