// `npm run demo`: the whole of Ferry on one machine. Starts the QEMU lab (two hosts in network
// namespaces, Temporal, the workers), boots a guest on node-a that counts, writes records and
// answers requests, migrates it live to node-b with a progress bar, checks what a user cares
// about, and reports. `--json`: the last line of output is one JSON object.
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { startQemuLab } from './qemu-lab.js';
import { startProber, quiesce, stat } from './guest-client.js';
import { CONTROL_TASK_QUEUE, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../shared/names.js';
import { SA_DESTINATION, SA_INSTANCE } from '../shared/search-attributes.js';
import type { MigrationResult } from '../shared/messages.js';
import { summarize } from '../cli/migrate-commands.js';
import { watchProgress } from '../cli/progress.js';

const opts = new Command('ferry-demo')
  .description('a live migration of a working guest in a local two-host QEMU lab')
  .option('--json', 'end with one JSON line (the report)')
  .option('--disk <MiB>', 'guest disk size in MiB', '256')
  .option('--memory <MiB>', 'guest memory in MiB', '128')
  .option('--link <Mbit>', 'shape the migration link to this rate (e.g. 100, as in the paper)')
  .option('--keep', 'leave the lab running afterwards (Temporal UI on http://127.0.0.1:8233)')
  .option('--hypervisor <kind>', 'qemu (xen: see docs/xen.md)', 'qemu')
  .parse(process.argv)
  .opts<{ json?: boolean; disk: string; memory: string; link?: string; keep?: boolean; hypervisor: string }>();

const say = (s: string) => process.stderr.write(`${s}\n`);

async function main(): Promise<number> {
  if (opts.hypervisor !== 'qemu') {
    say(`ferry-demo: the ${opts.hypervisor} lab is not available yet; see docs/xen.md`);
    return 2;
  }
  const t0 = Date.now();
  const lab = await startQemuLab({ dir: '/var/tmp/ferry-demo', linkMbit: opts.link ? Number(opts.link) : undefined, log: (l) => say(`[lab] ${l}`) });
  try {
    say('[lab] starting the controller worker and a node worker in each namespace');
    await lab.startWorkers();
    const id = 'i-demo';
    const diskMiB = Number(opts.disk);
    say(`[lab] booting ${id} on node-a: ${opts.memory} MiB memory, ${diskMiB} MiB disk with an ext4 file system of /usr/share/doc`);
    const spec = await lab.bootGuest({ id, node: 'node-a', memoryMiB: Number(opts.memory), diskMiB, rate: 5, contentDir: '/usr/share/doc' });
    const addrs = lab.serviceAddresses(spec);
    for (let i = 0; ; i++) {
      try {
        const s = await stat(addrs[0]!.host, addrs[0]!.port);
        say(`[guest] answering on node-a: counter=${s.counter} seq=${s.seq}`);
        break;
      } catch {
        if (i > 240) throw new Error('the guest did not come up on node-a');
        await new Promise((r) => setTimeout(r, 500));
      }
    }

    const prober = startProber(addrs, 200);
    await new Promise((r) => setTimeout(r, 2000));
    say(`[ferry] migrate ${id} --to node-b (Temporal UI: http://127.0.0.1:8233/namespaces/default/workflows/${migrationWorkflowId(id)})`);
    const handle = await lab.client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: migrationWorkflowId(id),
      args: [{ instanceId: id, destination: 'node-b', options: { verifyDisk: true } }],
      typedSearchAttributes: [
        { key: SA_INSTANCE, value: id },
        { key: SA_DESTINATION, value: 'node-b' },
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

    const dest = addrs.find((a) => a.node === 'node-b')!;
    let lastSeq = 0;
    if (r?.outcome === 'migrated') lastSeq = await quiesce(dest.host, dest.port).catch(() => 0);
    const violations = lab.inventory.checkConsistency();
    const report = {
      instanceId: id,
      source: 'node-a',
      destination: 'node-b',
      outcome: r?.outcome ?? 'failed',
      error,
      totalMs: r?.totalMs ?? 0,
      downtimeMs: r?.downtimeMs ?? 0,
      hypervisorDowntimeMs: r?.hypervisorDowntimeMs,
      clientGapMs: probe.longestGapMs,
      bytesOnWire: (r?.diskWireBytes ?? 0) + (r?.memoryBytes ?? 0),
      diskWireBytes: r?.diskWireBytes ?? 0,
      memoryBytes: r?.memoryBytes ?? 0,
      diskBytes: spec.diskBytes,
      rounds: r?.rounds ?? 0,
      diskIdentical: r?.diskIdentical === true,
      guestCounterContinued: !probe.counterReset && (probe.lastCounter ?? 0) > (probe.firstCounter ?? 0),
      guestRequests: { sent: probe.requests, answered: probe.answered },
      lastDurableRecord: lastSeq,
      inventoryConsistent: violations.length === 0 && lab.inventory.getInstance(id).host === (r?.outcome === 'migrated' ? 'node-b' : 'node-a'),
      sourceCleaned: !existsSync(spec.diskPath),
      labMs: Date.now() - t0,
    };
    if (r) say(`\n${summarize(r)}`);
    say(`  guest: counter continued ${report.guestCounterContinued}, longest gap a client saw ${report.clientGapMs} ms, ${probe.answered}/${probe.requests} requests answered`);
    say(`  inventory consistent: ${report.inventoryConsistent}${violations.length ? ` (${violations.map((v) => v.message).join('; ')})` : ''}`);
    if (opts.json) process.stdout.write(`${JSON.stringify(report)}\n`);
    return report.outcome === 'migrated' && report.diskIdentical && report.guestCounterContinued && report.inventoryConsistent ? 0 : 1;
  } finally {
    if (opts.keep) say('[lab] left running (--keep): Temporal UI on http://127.0.0.1:8233');
    else await lab.close({ killGuests: true });
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    say(`ferry-demo: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
