// One benchmark run: boot a fresh guest on node-a from the same content, let the Figure 8 client
// probe it, migrate it to node-b (Ferry through the Temporal workflow, or the libvirt-style
// baseline), keep probing a few seconds, and record what a user and the link saw. Every run
// stops the guest it moved, so the next one starts on an idle machine.
import { rm } from 'node:fs/promises';
import type { Lab } from '../../src/labs/qemu-lab.js';
import { labNodes, shapeMigrationLink } from '../../src/labs/lab-network.js';
import { startProber, stat, type ProbeSample } from '../../src/labs/guest-client.js';
import { CONTROL_TASK_QUEUE, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../../src/shared/names.js';
import { SA_DESTINATION, SA_INSTANCE } from '../../src/shared/search-attributes.js';
import type { MigrationResult, PauseParts } from '../../src/shared/messages.js';
import type { InstanceSpec } from '../../src/shared/instance.js';
import { migrateNative } from '../../src/drivers/qemu/native-migration.js';
import { createQemuDriver } from '../../src/drivers/qemu/qemu-driver.js';
import { instancePaths, stopQemu } from '../../src/drivers/qemu/qemu-process.js';
import { readLinkCounters, startLinkSampler, type LinkSample } from './paper-link.js';
import { measureDiskContent, type DiskContent } from './paper-content.js';

/** QEMU section: Ferry and the QEMU-native baseline; libvirt section: Ferry's libvirt driver and `virsh migrate --copy-storage-all`. */
export type Method = 'ferry' | 'baseline' | 'ferry-libvirt' | 'virsh';

export interface RunSettings {
  diskMiB: number;
  memoryMiB: number;
  /** Guest records written per second (4 KiB each). */
  rate: number;
  contentDir: string;
  /** Prober period, ms (the paper's client: a request every 100-200 ms). */
  probeMs: number;
  /** Seconds probed before the migration starts and after it ends. */
  marginS: number;
  /** The shaped link rate; re-applied before every migration and checked after it. */
  linkMbit: number;
  log: (line: string) => void;
}

/** A phase as a band on the timeline, ms relative to the migration's start. */
export interface PhaseSpan {
  phase: string;
  startMs: number;
  endMs: number;
}

export interface RunRecord {
  method: Method;
  run: number;
  instanceId: string;
  ok: boolean;
  error?: string;
  totalMs: number;
  /** Source paused -> destination running, wall clock (final disk sync included for Ferry). */
  downtimeMs: number;
  /** QEMU's `downtime` of the memory switchover (query-migrate). */
  qemuDowntimeMs?: number;
  /** Longest gap between two answered requests of the client. */
  clientGapMs: number;
  /** Kernel counters of mig0 in node-a, before -> after the run. */
  bytesOnWire: { aToB: number; bToA: number; total: number };
  /** Ferry's own count of disk bytes it sent (frames + headers, before TLS). */
  diskWireBytes?: number;
  memoryBytes: number;
  rounds?: number;
  diskIdentical?: boolean;
  /** Ferry's pause in parts (final disk round, memory switchover, destination start). */
  pause?: PauseParts;
  phases: PhaseSpan[];
  requests: { sent: number; answered: number };
  /** Client samples, `t` ms relative to the migration's start, `ms` null when unanswered. */
  samples: { t: number; ms: number | null }[];
  /** Link rate (Mbit/s, node-a -> node-b) and CPU busy fraction per second, `t` in ms. */
  link: { t: number; mbit: number; cpuBusy: number }[];
  content?: DiskContent;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const A = labNodes['node-a'];
const B = labNodes['node-b'];

export async function waitForGuest(host: string, port: number): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await stat(host, port);
      return;
    } catch {
      if (i > 480) throw new Error(`the guest at ${host}:${port} did not answer after 4 minutes (see its serial.log)`);
      await sleep(500);
    }
  }
}

export function linkSeries(samples: LinkSample[], t0: number): RunRecord['link'] {
  const out: RunRecord['link'] = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1]!;
    const b = samples[i]!;
    const dt = (b.at - a.at) / 1000;
    if (dt <= 0) continue;
    out.push({ t: b.at - t0, mbit: +(((b.txBytes - a.txBytes) * 8) / dt / 1e6).toFixed(2), cpuBusy: b.cpuBusy });
  }
  return out;
}

/**
 * A run whose link carried clearly more than the shaped rate in some second was not shaped for
 * all of it (something else touched the shared lab network): it does not count.
 */
export function linkViolation(r: Pick<RunRecord, 'link' | 'totalMs'>, linkMbit: number): string | undefined {
  const peak = Math.max(0, ...r.link.filter((l) => l.t >= 0 && l.t <= r.totalMs).map((l) => l.mbit));
  return peak > linkMbit * 1.2 ? `the link carried ${peak.toFixed(0)} Mbit/s in one second, over the ${linkMbit} Mbit/s shaping: it was unshaped during the run` : undefined;
}

/** Turns "phase P began at T" events into bands that end where the next one begins. */
export function spansFromTimeline(events: { phase: string; at: number }[], t0: number, endAt: number): PhaseSpan[] {
  const spans: PhaseSpan[] = [];
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.phase === 'done') break;
    const end = events[i + 1]?.at ?? endAt;
    spans.push({ phase: e.phase, startMs: e.at - t0, endMs: end - t0 });
  }
  return spans;
}

/**
 * What a user and the link saw around one migration: the client probes the guest from `marginS`
 * before to `marginS` after, the link is (re)shaped and its counters read on both sides of
 * `migrate(t0)`, which resolves when the migration ended. Fills in `rec`; both sections use it.
 */
export async function probeAround(addrs: { host: string; port: number }[], s: RunSettings, rec: RunRecord, migrate: (t0: number) => Promise<number>): Promise<void> {
  const proberT0 = Date.now();
  const prober = startProber(addrs, s.probeMs);
  const sampler = startLinkSampler(A.netns);
  try {
    await sleep(s.marginS * 1000);
    // The lab network is shared: another process may have unshaped the link since the last run.
    await shapeMigrationLink(s.linkMbit);
    const before = await readLinkCounters(A.netns);
    const t0 = Date.now();
    const endAt = await migrate(t0);
    const after = await readLinkCounters(A.netns);
    rec.bytesOnWire = { aToB: after.txBytes - before.txBytes, bToA: after.rxBytes - before.rxBytes, total: 0 };
    rec.bytesOnWire.total = rec.bytesOnWire.aToB + rec.bytesOnWire.bToA;
    rec.totalMs ||= endAt - t0;
    await sleep(s.marginS * 1000);
    const samples = prober.samples;
    const probe = await prober.stop();
    rec.samples = samples.map((x: ProbeSample) => ({ t: proberT0 + x.t - t0, ms: x.ms }));
    rec.clientGapMs = probe.longestGapMs;
    rec.requests = { sent: probe.requests, answered: probe.answered };
    rec.link = linkSeries(await sampler.stop(), t0);
    if (probe.counterReset) rec.error ??= 'the guest counter went back: it was rebooted, not moved';
    rec.error ??= linkViolation(rec, s.linkMbit);
    rec.ok = rec.error === undefined;
  } finally {
    // Idempotent: a second stop after a normal end does nothing.
    await prober.stop().catch(() => undefined);
    await sampler.stop().catch(() => undefined);
  }
}

/** Boots the run's guest, measures it, probes it around `migrate`, and cleans up. */
export async function runOnce(
  lab: Lab,
  method: Method,
  run: number,
  s: RunSettings,
  measureContent: boolean,
): Promise<RunRecord> {
  const id = `i-bench-${method}-${run}`;
  s.log(`${id}: booting on node-a (${s.memoryMiB} MiB memory, ${s.diskMiB} MiB ext4 disk of ${s.contentDir}, ${s.rate} records/s)`);
  const spec = await lab.bootGuest({ id, node: 'node-a', memoryMiB: s.memoryMiB, diskMiB: s.diskMiB, rate: s.rate, contentDir: s.contentDir });
  const rec: RunRecord = {
    method, run, instanceId: id, ok: false, totalMs: 0, downtimeMs: 0, clientGapMs: 0,
    bytesOnWire: { aToB: 0, bToA: 0, total: 0 }, memoryBytes: 0, phases: [], requests: { sent: 0, answered: 0 }, samples: [], link: [],
  };
  const addrs = lab.serviceAddresses(spec);
  try {
    await waitForGuest(addrs[0]!.host, addrs[0]!.port);
    if (measureContent) {
      s.log(`${id}: measuring the disk's compressibility`);
      rec.content = await measureDiskContent(spec.disks[0]!.path);
    }
    s.log(`${id}: migrating with ${method}`);
    await probeAround(addrs, s, rec, (t0) => (method === 'ferry' ? migrateWithFerry(lab, spec, rec, t0) : migrateWithBaseline(lab, spec, rec, t0)));
    return rec;
  } catch (err) {
    rec.error = err instanceof Error ? err.message : String(err);
    s.log(`${id}: FAILED: ${rec.error}`);
    return rec;
  } finally {
    // The moved guest (or the source, after a failure) stops here: CPU is scarce.
    for (const n of [A, B]) {
      const paths = instancePaths(lab.nodeStateDir(n.name), id);
      await stopQemu(paths, 2000).catch(() => undefined);
      await rm(paths.dir, { recursive: true, force: true });
      for (const d of createQemuDriver({ stateDir: lab.nodeStateDir(n.name) }).destinationDisks(spec)) await rm(d.path, { force: true });
    }
  }
}

/** Ferry: the `migrateInstance` workflow, started as the demo and the CLI start it. */
async function migrateWithFerry(lab: Lab, spec: InstanceSpec, rec: RunRecord, t0: number): Promise<number> {
  const handle = await lab.client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: migrationWorkflowId(spec.id),
    args: [{ instanceId: spec.id, destination: B.name, options: {} }],
    typedSearchAttributes: [
      { key: SA_INSTANCE, value: spec.id },
      { key: SA_DESTINATION, value: B.name },
    ],
  });
  const r = (await handle.result()) as MigrationResult;
  const endAt = Date.now();
  if (r.outcome !== 'migrated') rec.error = `rolled back: ${r.reason ?? 'no reason given'}`;
  rec.totalMs = r.totalMs;
  rec.downtimeMs = r.downtimeMs;
  rec.qemuDowntimeMs = r.hypervisorDowntimeMs;
  rec.diskWireBytes = r.diskWireBytes;
  rec.memoryBytes = r.memoryBytes;
  rec.rounds = r.rounds;
  rec.diskIdentical = r.diskIdentical;
  rec.pause = r.pause;
  rec.phases = spansFromTimeline(r.timeline, t0, r.timeline.at(-1)?.at ?? endAt);
  return endAt;
}

/**
 * The libvirt `--copy-storage-all` way, driven from the bench process: QMP sockets are unix
 * sockets in the node state dirs, and the driver starts the destination QEMU in node-b's namespace.
 */
async function migrateWithBaseline(lab: Lab, spec: InstanceSpec, rec: RunRecord, t0: number): Promise<number> {
  let mirrorStart: number | undefined;
  let memoryStart: number | undefined;
  const r = await migrateNative({
    spec,
    source: { stateDir: lab.nodeStateDir(A.name), netns: A.netns },
    dest: { stateDir: lab.nodeStateDir(B.name), netns: B.netns },
    destHost: B.dataAddress,
    onProgress: (p) => {
      if (p.phase === 'disk') mirrorStart ??= Date.now();
      if (p.phase === 'memory') memoryStart ??= Date.now();
    },
  });
  const endAt = Date.now();
  rec.totalMs = r.totalMs;
  rec.downtimeMs = r.pausedMs;
  rec.qemuDowntimeMs = r.qemuDowntimeMs;
  rec.memoryBytes = r.memoryBytes;
  const ready = r.diskReadyMs;
  const paused = r.diskReadyMs + r.memoryMs;
  // mirrorStart is the first poll after blockdev-mirror (within one poll period, 200 ms).
  const mirror = (mirrorStart ?? t0) - t0;
  rec.phases = [
    { phase: 'prepare', startMs: 0, endMs: mirror },
    { phase: 'disk-mirror', startMs: mirror, endMs: ready },
    { phase: 'memory', startMs: Math.min(ready, (memoryStart ?? t0 + ready) - t0), endMs: paused },
    { phase: 'paused', startMs: paused, endMs: r.totalMs },
  ];
  return endAt;
}
