// The Xen migration lab: the Xen lab's two hosts (real Xen 4.17 under QEMU TCG) with the rest of a
// Ferry deployment around them, as the QEMU lab has: a Temporal dev server, an inventory, the
// controller worker and one node worker per Xen host. Node workers run on this machine and drive
// their dom0 over SSH (host keys pinned); the disk stream goes source dom0 -> SFTP -> source
// worker -> TLS on loopback -> destination worker -> SFTP -> destination dom0, and `xl migrate`
// goes over the dom0s' own link. Used by `npm run demo -- --hypervisor xen` and the Xen e2e test.
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { Client } from '@temporalio/client';
import { startDevServer } from '../temporal-dev.js';
import { forwardTcp } from '../tcp-forward.js';
import { labWorkers, makeDisk, repoRoot, waitForPollers } from '../lab-common.js';
import { openInventory, type Inventory } from '../../inventory/index.js';
import { loadConfig } from '../../config/index.js';
import { connectClient } from '../../workers/connection.js';
import type { InstanceSpec } from '../../drivers/driver.js';
import { createXenDriver, type XenDriver } from '../../drivers/xen/xen-driver.js';
import { migrationWorkflowId } from '../../shared/names.js';
import { startXenLab, type XenHost, type XenLab } from './xen-lab.js';
import { XEN_GUEST_ADDRESS, XEN_GUEST_PORT, XEN_STATE_DIR, xenGuestSpec } from './lab-guest.js';

const MiB = 1024 * 1024;

export interface XenMigrationLabOptions {
  dir?: string;
  temporalPort?: number;
  log?: (line: string) => void;
}

export interface XenGuestOptions {
  id: string;
  node?: string;
  memoryMiB?: number;
  diskMiB?: number;
  guestType?: 'pvh' | 'pv';
  /** Records per second the workload writes. */
  rate?: number;
  /** Fill the disk with an ext4 file system of this directory (real content for LZO). */
  contentDir?: string;
}

/** Extra `node.xen` settings for one node worker (e.g. a different `xl migrate` transport). */
export type XenNodeOverrides = { migrateSshCommand?: string[] };

export type XenMigrationLab = Awaited<ReturnType<typeof startXenMigrationLab>>;

export async function startXenMigrationLab(opts: XenMigrationLabOptions = {}) {
  const dir = opts.dir ?? '/var/tmp/ferry-xen-lab';
  const log = opts.log ?? (() => undefined);
  await mkdir(join(dir, 'logs'), { recursive: true });
  // Keys and host keys are generated afresh for every lab.
  await rm(join(dir, 'xen'), { recursive: true, force: true });

  const port = opts.temporalPort ?? 7243;
  log(`temporal dev server on 127.0.0.1:${port} (web UI http://127.0.0.1:${port + 1000})`);
  for (const f of ['', '-wal', '-shm']) await rm(join(dir, 'temporal.db') + f, { force: true });
  const temporal = await startDevServer({ ip: '127.0.0.1', port, uiPort: port + 1000, dbFile: join(dir, 'temporal.db'), logFile: join(dir, 'logs/temporal.log') });

  let xen: XenLab;
  try {
    xen = await startXenLab({ hosts: 2, dir: join(dir, 'xen'), cacheDir: join(repoRoot, '.cache/xen'), log });
  } catch (err) {
    await temporal.stop();
    throw err;
  }
  const hosts = new Map<string, XenHost>(xen.hosts.map((h) => [h.name, h]));
  const drivers = new Map<string, XenDriver>(xen.hosts.map((h) => [h.name, createXenDriver({ executor: h.ssh, stateDir: XEN_STATE_DIR, migrationAddress: h.linkAddress })]));

  const inventoryPath = join(dir, 'inventory.db');
  for (const f of ['', '-wal', '-shm']) await rm(inventoryPath + f, { force: true });
  const base = { temporal: { address: temporal.address, namespace: 'default' }, inventory: { path: inventoryPath }, log: { level: 'info' } };
  const configPath = join(dir, 'ferry.yaml');
  await writeFile(configPath, stringify(base));
  const inventory: Inventory = openInventory(inventoryPath);
  for (const h of xen.hosts) {
    inventory.addNode({
      name: h.name,
      hypervisor: 'xen',
      controlAddress: '127.0.0.1',
      dataAddress: '127.0.0.1',
      capacity: { vcpus: 4, memoryMiB: 700, diskBytes: 2048 * MiB },
    });
  }
  const keyFile = join(xen.dir, 'client_key');

  /** Each node worker reads its own file: its dom0's SSH endpoint and migration address. */
  async function writeNodeConfig(h: XenHost, over: XenNodeOverrides = {}): Promise<string> {
    const file = join(dir, `${h.name}.yaml`);
    await writeFile(
      file,
      stringify({
        ...base,
        node: {
          name: h.name,
          hypervisor: 'xen',
          dataAddress: '127.0.0.1',
          stateDir: join(dir, 'nodes', h.name),
          xen: {
            stateDir: XEN_STATE_DIR,
            migrationAddress: h.linkAddress,
            ssh: { host: '127.0.0.1', port: h.sshPort, user: 'root', keyFile, knownHostsFile: xen.knownHosts },
            ...over,
          },
        },
      }),
    );
    return file;
  }

  const client: Client = await connectClient(loadConfig({ file: configPath, env: {} }));
  const workers = labWorkers(join(dir, 'logs'));
  const forwards: Array<{ close(): Promise<void> }> = [];
  const services: Array<{ node: string; host: string; port: number }> = [];

  const host = (name: string) => {
    const h = hosts.get(name);
    if (!h) throw new Error(`no Xen lab host ${name}`);
    return h;
  };

  const lab = {
    dir,
    temporal,
    client,
    inventory,
    configPath,
    xen,
    nodes: xen.hosts.map((h) => h.name),
    host,
    driver: (name: string) => drivers.get(name)!,

    async startNodeWorker(name: string, over?: XenNodeOverrides) {
      workers.start(name, ['worker', '--node', name], { FERRY_CONFIG: await writeNodeConfig(host(name), over) });
      await waitForPollers(client, [`ferry-node-${name}`]);
    },
    async startWorkers() {
      workers.start('controller', ['worker', '--controller'], { FERRY_CONFIG: configPath });
      for (const h of xen.hosts) workers.start(h.name, ['worker', '--node', h.name], { FERRY_CONFIG: await writeNodeConfig(h) });
      await waitForPollers(client, ['ferry-control', ...xen.hosts.map((h) => `ferry-node-${h.name}`)]);
      log('xen lab: controller and node workers polling');
    },
    stopWorker: workers.stop,

    /** Writes the guest's disk on its dom0, starts the domain there and registers it. */
    async bootGuest(g: XenGuestOptions): Promise<InstanceSpec> {
      const node = g.node ?? xen.hosts[0]!.name;
      const h = host(node);
      const spec = xenGuestSpec(g.id, { diskBytes: (g.diskMiB ?? 32) * MiB, memoryMiB: g.memoryMiB ?? 256, guestType: g.guestType ?? 'pvh', rate: g.rate });
      let t = Date.now();
      await uploadDisk(h, spec, g.contentDir, join(dir, 'images'));
      log(`xen lab: guest ${g.id}: disk on ${node} in ${Date.now() - t} ms`);
      t = Date.now();
      await drivers.get(node)!.start(spec);
      log(`xen lab: guest ${g.id}: xl create on ${node} in ${Date.now() - t} ms`);
      inventory.addInstance({ spec, host: node });
      return spec;
    },

    /** Removes a guest from both hosts and the inventory (a test that failed half-way). */
    async destroyGuest(spec: InstanceSpec) {
      await client.workflow.getHandle(migrationWorkflowId(spec.id)).terminate('lab: guest destroyed').catch(() => undefined);
      for (const r of inventory.listReservations({ live: true })) if (r.instanceId === spec.id) inventory.release(r.migrationId);
      for (const h of xen.hosts) {
        for (const name of [spec.id, `${spec.id}--incoming`, `${spec.id}--migratedaway`]) await h.ssh.run('xl', ['destroy', name]);
        await drivers.get(h.name)!.retire(spec).catch(() => undefined);
        await drivers.get(h.name)!.abortDestination(spec).catch(() => undefined);
      }
      inventory.removeInstance(spec.id);
    },

    /**
     * One local address per host that reaches the guest's request port from that host's dom0
     * (SSH direct-tcpip), so the lab's guest clients work unchanged.
     */
    async serviceAddresses(_spec?: InstanceSpec) {
      if (services.length === 0) {
        for (const h of xen.hosts) {
          const fwd = await forwardTcp({ host: '127.0.0.1', port: 0 }, () => h.ssh.openTcp(XEN_GUEST_ADDRESS, XEN_GUEST_PORT));
          forwards.push(fwd);
          services.push({ node: h.name, host: '127.0.0.1', port: fwd.port });
        }
      }
      return services;
    },

    /** What a host still holds of an instance: domains, era device, disk file, state folder. */
    async leftovers(spec: InstanceSpec, node: string): Promise<string[]> {
      const h = host(node);
      const found: string[] = [];
      const domains = (await h.ssh.run('xl', ['list'])).stdout.split('\n').map((l) => l.split(/\s+/)[0]!);
      for (const d of domains) if (d === spec.id || d.startsWith(`${spec.id}--`)) found.push(`domain ${d}`);
      if ((await h.ssh.run('dmsetup', ['info', `ferry-${spec.id}`])).code === 0) found.push(`dm device ferry-${spec.id}`);
      for (const p of [spec.diskPath, drivers.get(node)!.destinationDiskPath(spec), `${XEN_STATE_DIR}/${spec.id}`]) {
        if ((await h.ssh.run('test', ['-e', p])).code === 0) found.push(p);
      }
      return [...new Set(found)];
    },

    async close() {
      await workers.stopAll();
      for (const f of forwards) await f.close().catch(() => undefined);
      await client.connection.close().catch(() => undefined);
      inventory.close();
      await xen.stop();
      await temporal.stop();
    },
  };
  return lab;
}

/** Puts the guest's disk on its dom0: zeros, or an ext4 of `contentDir` (only non-zero MiBs travel). */
async function uploadDisk(h: XenHost, spec: InstanceSpec, contentDir: string | undefined, imagesDir: string): Promise<void> {
  const dirOnHost = spec.diskPath.slice(0, spec.diskPath.lastIndexOf('/'));
  await h.ssh.run('mkdir', ['-p', dirOnHost]);
  await h.ssh.run('rm', ['-f', spec.diskPath]);
  await h.ssh.run('truncate', ['-s', String(spec.diskBytes), spec.diskPath]);
  if (!contentDir) return;
  await mkdir(imagesDir, { recursive: true });
  const local = join(imagesDir, `${spec.id}.raw`);
  await rm(local, { force: true });
  await makeDisk(local, spec.diskBytes, contentDir, 0, imagesDir);
  const src = await open(local, 'r');
  const dst = await h.ssh.openFile(spec.diskPath, 'r+');
  try {
    const buf = Buffer.alloc(MiB);
    for (let off = 0; off < spec.diskBytes; off += MiB) {
      const { bytesRead } = await src.read(buf, 0, MiB, off);
      const chunk = buf.subarray(0, bytesRead);
      if (chunk.some((b) => b !== 0)) await dst.write(off, Buffer.from(chunk));
    }
    await dst.datasync();
  } finally {
    await dst.close();
    await src.close();
    await rm(local, { force: true });
  }
}
