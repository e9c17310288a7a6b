// `npm run demo`: the whole of Ferry on one machine. Starts a lab (QEMU: two hosts in network
// namespaces; `--hypervisor xen`: two real Xen hosts under QEMU), Temporal and the workers, boots
// a guest that counts, writes records and answers requests, migrates it live to the other host
// with a progress bar, checks what a user cares about, and reports. `--json`: the last line of
// output is one JSON object, the same for both hypervisors.
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import type { Client } from '@temporalio/client';
import { startQemuLab } from './qemu-lab.js';
import { startXenMigrationLab } from './xen/xen-migration-lab.js';
import { labDiskPath, type LabDisk } from './xen/lab-guest.js';
import type { Inventory } from '../inventory/index.js';
import { totalDiskBytes, type InstanceSpec } from '../shared/instance.js';
import { startProber, quiesce, stat } from './guest-client.js';
import { CONTROL_TASK_QUEUE, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../shared/names.js';
import { SA_DESTINATION, SA_INSTANCE } from '../shared/search-attributes.js';
import type { MigrationResult } from '../shared/messages.js';
import { summarize } from '../cli/migrate-commands.js';
import { watchProgress } from '../cli/progress.js';

const opts = new Command('ferry-demo')
  .description('a live migration of a working guest in a local two-host QEMU lab')
  .option('--json', 'end with one JSON line (the report)')
  .option('--disk <MiB>', 'guest disk size in MiB (default 256 for qemu, 64 for xen)')
  .option('--memory <MiB>', 'guest memory in MiB', '128')
  .option('--link <Mbit>', 'qemu: shape the migration link to this rate (e.g. 100, as in the paper)')
  .option('--keep', 'leave the lab running afterwards (Temporal UI: its address is printed)')
  .option('--hypervisor <kind>', 'qemu, or xen (two Xen 4.17 hosts under QEMU; the first run builds their dom0, see docs/xen.md)', 'qemu')
  .parse(process.argv)
  .opts<{ json?: boolean; disk?: string; memory: string; link?: string; keep?: boolean; hypervisor: string }>();

const say = (s: string) => process.stderr.write(`${s}\n`);

/** What the demo needs of a lab, whichever hypervisor runs it. */
interface DemoLab {
  client: Client;
  inventory: Inventory;
  source: string;
  destination: string;
  uiUrl: string;
  boot(id: string): Promise<InstanceSpec>;
  addresses(spec: InstanceSpec): Promise<Array<{ node: string; host: string; port: number }>>;
  /** Nothing of the instance left on the source host (disk, domain or process state). */
  sourceCleaned(spec: InstanceSpec): Promise<boolean>;
  close(): Promise<void>;
}

const log = (l: string) => say(`[lab] ${l}`);
const MiB = 1024 * 1024;
const memoryMiB = Number(opts.memory);

async function startDemoLab(): Promise<DemoLab> {
  if (opts.hypervisor === 'qemu') {
    const lab = await startQemuLab({ dir: '/var/tmp/ferry-demo', linkMbit: opts.link ? Number(opts.link) : undefined, log });
    say('[lab] starting the controller worker and a node worker in each namespace');
    await lab.startWorkers();
    const diskMiB = Number(opts.disk ?? 256);
    return {
      client: lab.client,
      inventory: lab.inventory,
      source: 'node-a',
      destination: 'node-b',
      uiUrl: lab.temporal.uiUrl,
      boot(id) {
        say(`[lab] booting ${id} on node-a: ${memoryMiB} MiB memory, ${diskMiB} MiB disk with an ext4 file system of /usr/share/doc`);
        return lab.bootGuest({ id, node: 'node-a', memoryMiB, diskMiB, rate: 5, contentDir: '/usr/share/doc' });
      },
      addresses: async (spec) => lab.serviceAddresses(spec),
      sourceCleaned: async (spec) => !existsSync(spec.disks[0]!.path),
      close: () => lab.close({ killGuests: true }),
    };
  }
  if (opts.hypervisor === 'xen') {
    const lab = await startXenMigrationLab({ dir: '/var/tmp/ferry-demo-xen', log });
    say('[lab] starting the controller worker and a node worker per Xen host (each drives its dom0 over SSH)');
    await lab.startWorkers();
    const diskMiB = Number(opts.disk ?? 64);
    // An operator's guest: its root disk an LV in the host's volume group, a data disk an image file.
    const disks: LabDisk[] = [
      { vdev: 'xvda', kind: 'lv', bytes: diskMiB * MiB },
      { vdev: 'xvdb', kind: 'file', bytes: 16 * MiB },
    ];
    return {
      client: lab.client,
      inventory: lab.inventory,
      source: 'xa',
      destination: 'xb',
      uiUrl: lab.temporal.uiUrl,
      async boot(id) {
        say(`[lab] on Xen host xa, as an operator would: lvcreate ${labDiskPath(id, disks[0]!)} (${diskMiB} MiB, an ext4 of /usr/share/perl), an image file ${labDiskPath(id, disks[1]!)} (16 MiB), /etc/xen/${id}.cfg, xl create`);
        await lab.createGuest({ id, node: 'xa', memoryMiB, rate: 5, disks, contentDir: '/usr/share/perl' });
        say(`[ferry] ferry node sync xa`);
        const sync = await lab.sync('xa');
        say(`[ferry] xa: added ${sync.added.join(', ') || 'none'}${sync.refused.map((x) => `; cannot migrate ${x.name}: ${x.reason}`).join('')}`);
        return lab.inventory.getInstance(id).spec;
      },
      addresses: () => lab.serviceAddresses(),
      sourceCleaned: async (spec) => (await lab.leftovers(spec.id, disks, 'xa')).length === 0,
      close: () => lab.close(),
    };
  }
  throw new Error(`unknown hypervisor ${JSON.stringify(opts.hypervisor)}: qemu or xen`);
}

async function main(): Promise<number> {
  const t0 = Date.now();
  const lab = await startDemoLab();
  const { source, destination } = lab;
  try {
    const id = 'i-demo';
    const spec = await lab.boot(id);
    const addrs = await lab.addresses(spec);
    for (let i = 0; ; i++) {
      try {
        const s = await stat(addrs[0]!.host, addrs[0]!.port);
        say(`[guest] answering on ${source}: counter=${s.counter} seq=${s.seq}`);
        break;
      } catch {
        if (i > 600) throw new Error(`the guest did not come up on ${source}`);
        await new Promise((r) => setTimeout(r, 500));
      }
    }

    const prober = startProber(addrs, 200);
    await new Promise((r) => setTimeout(r, 2000));
    say(`[ferry] migrate ${id} --to ${destination} (Temporal UI: ${lab.uiUrl}/namespaces/default/workflows/${migrationWorkflowId(id)})`);
    const handle = await lab.client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: migrationWorkflowId(id),
      args: [{ instanceId: id, destination, options: { verify: true } }],
      typedSearchAttributes: [
        { key: SA_INSTANCE, value: id },
        { key: SA_DESTINATION, value: destination },
      ],
    });
    await watchProgress(handle, { tty: process.stderr.isTTY === true });
    let r: MigrationResult | undefined;
    let error: string | undefined;
    try {
      r = (await handle.result()) as MigrationResult;
    } catch (err) {
      error = String((err as { cause?: { cause?: Error; message?: string } }).cause?.cause?.message ?? (err as Error).message);
    }
    await new Promise((res) => setTimeout(res, 2000));
    const probe = await prober.stop();

    const dest = addrs.find((a) => a.node === destination)!;
    let lastSeq = 0;
    if (r?.outcome === 'migrated') lastSeq = await quiesce(dest.host, dest.port).catch(() => 0);
    const violations = lab.inventory.checkConsistency();
    const report = {
      instanceId: id,
      hypervisor: spec.hypervisor,
      source,
      destination,
      outcome: r?.outcome ?? 'failed',
      error,
      totalMs: r?.totalMs ?? 0,
      downtimeMs: r?.downtimeMs ?? 0,
      hypervisorDowntimeMs: r?.hypervisorDowntimeMs,
      clientGapMs: probe.longestGapMs,
      bytesOnWire: (r?.diskWireBytes ?? 0) + (r?.memoryBytes ?? 0),
      diskWireBytes: r?.diskWireBytes ?? 0,
      memoryBytes: r?.memoryBytes ?? 0,
      diskBytes: totalDiskBytes(spec),
      startedBy: spec.startedBy ?? 'ferry',
      disks: spec.disks.map((d) => ({ vdev: d.vdev, kind: d.kind, bytes: d.bytes, identical: r?.disksIdentical?.[d.vdev] === true })),
      rounds: r?.rounds ?? 0,
      diskIdentical: r?.diskIdentical === true,
      guestCounterContinued: !probe.counterReset && (probe.lastCounter ?? 0) > (probe.firstCounter ?? 0),
      guestRequests: { sent: probe.requests, answered: probe.answered },
      lastDurableRecord: lastSeq,
      inventoryConsistent: violations.length === 0 && lab.inventory.getInstance(id).host === (r?.outcome === 'migrated' ? destination : source),
      sourceCleaned: await lab.sourceCleaned(spec),
      labMs: Date.now() - t0,
    };
    if (r) say(`\n${summarize(r)}`);
    say(`  guest: counter continued ${report.guestCounterContinued}, longest gap a client saw ${report.clientGapMs} ms, ${probe.answered}/${probe.requests} requests answered`);
    say(`  inventory consistent: ${report.inventoryConsistent}${violations.length ? ` (${violations.map((v) => v.message).join('; ')})` : ''}`);
    if (opts.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    return report.outcome === 'migrated' && report.diskIdentical && report.guestCounterContinued && report.inventoryConsistent ? 0 : 1;
  } finally {
    if (opts.keep) say(`[lab] left running (--keep): Temporal UI on ${lab.uiUrl}`);
    else await lab.close();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    say(`ferry-demo: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
