// The baseline Ferry is compared with: what libvirt's `virsh migrate --live --copy-storage-all`
// does with QEMU. The destination QEMU (paused, `-incoming defer`) serves its empty disk through
// a writable NBD export; the source mirrors its disk into it (`blockdev-mirror`, sync=full, guest
// writes are forwarded once the job is `ready`), then memory moves with `migrate`. At
// pre-switchover (source paused) the ready mirror is completed without pivot (`block-job-cancel`,
// as libvirt does), and the switchover completes. Used by the benchmarks.
import type { InstanceSpec, MemoryProgress } from '../driver.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { QmpCommandError, withQmp, type QmpClient } from './qmp.js';
import { createQemuDriver, type QemuDriverOptions } from './qemu-driver.js';
import { DISK_NODE, removeExports } from './dirty-tracking.js';

const JOB = 'ferry-native';
const TARGET = 'ferry-native-target';
const EXPORT = 'ferry-native';
/** NBD's registered port first; the next ones when another migration holds it. */
const NBD_PORTS = Array.from({ length: 100 }, (_, i) => 10809 + i);

export interface NativeMigrationInput {
  /** The running instance (its one disk is the source disk). */
  spec: InstanceSpec;
  /** Driver settings of the source node and of the destination node. */
  source: QemuDriverOptions;
  dest: QemuDriverOptions;
  /** Destination address on the migration link: NBD and memory streams both go there. */
  destHost: string;
  downtimeMs?: number;
  /** Applies to the disk mirror and to the memory stream; absent = unlimited. */
  bandwidthBytesPerSec?: number;
  /** Quit the source and delete its disk afterwards (default true). */
  retireSource?: boolean;
  onProgress?: (p: NativeProgress) => void;
  pollMs?: number;
}

export type NativeProgress =
  | { phase: 'disk'; doneBytes: number; totalBytes: number; ready: boolean }
  | ({ phase: 'memory' } & MemoryProgress);

export interface NativeMigrationResult {
  /** From the first command to the destination running. */
  totalMs: number;
  /** Until the mirror was `ready` (bulk disk copy). */
  diskReadyMs: number;
  /** Memory pre-copy until pre-switchover. */
  memoryMs: number;
  /** QEMU's own numbers for the memory migration. */
  qemuTotalMs: number;
  qemuDowntimeMs?: number;
  memoryBytes: number;
  /** Source paused -> destination running, as seen from outside (mirror completion included). */
  pausedMs: number;
}

interface BlockJob {
  device: string;
  offset: number;
  len: number;
  ready: boolean;
  status: string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function jobs(q: QmpClient): Promise<BlockJob[]> {
  return q.execute<BlockJob[]>('query-block-jobs');
}

/** Runs the whole native migration; on failure before the switchover it rolls back. */
export async function migrateNative(input: NativeMigrationInput): Promise<NativeMigrationResult> {
  const { spec } = input;
  const src = createQemuDriver(input.source);
  const dst = createQemuDriver(input.dest);
  const poll = input.pollMs ?? 200;
  const srcQmp = src.paths(spec).qmp;
  const dstQmp = dst.paths(spec).qmp;
  const t0 = Date.now();
  let switched = false;
  try {
    if ((await src.state(spec)) !== 'running') throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is not running on the source`);
    const { memoryUri } = await dst.prepareDestination(spec, { listenHost: input.destHost });

    const nbdPort = await withQmp(dstQmp, async (q) => {
      for (const port of NBD_PORTS) {
        try {
          await q.execute('nbd-server-start', { addr: { type: 'inet', data: { host: input.destHost, port: String(port) } } });
        } catch (e) {
          if (e instanceof QmpCommandError && /address already in use|failed to bind|already running/i.test(e.desc)) continue;
          throw e;
        }
        // A writable export activates the incoming (inactive) disk node for the mirror's writes.
        await q.execute('block-export-add', { type: 'nbd', id: EXPORT, 'node-name': DISK_NODE, name: DISK_NODE, writable: true });
        return port;
      }
      throw new FerryError(ErrorTypes.DriverError, `no free NBD port on ${input.destHost}`);
    });

    await withQmp(srcQmp, async (q) => {
      await q.execute('blockdev-add', {
        driver: 'nbd',
        'node-name': TARGET,
        server: { type: 'inet', host: input.destHost, port: String(nbdPort) },
        export: DISK_NODE,
      });
      await q.execute('blockdev-mirror', {
        'job-id': JOB,
        device: DISK_NODE,
        target: TARGET,
        sync: 'full',
        ...(input.bandwidthBytesPerSec ? { speed: Math.round(input.bandwidthBytesPerSec) } : {}),
      });
    });
    for (;;) {
      const job = (await withQmp(srcQmp, jobs)).find((j) => j.device === JOB);
      if (!job) throw new FerryError(ErrorTypes.DriverError, `disk mirror of ${spec.id} vanished (see the source's qemu.log)`);
      input.onProgress?.({ phase: 'disk', doneBytes: job.offset, totalBytes: job.len, ready: job.ready });
      if (job.ready) break;
      await sleep(poll);
    }
    const tReady = Date.now();

    await src.migrateMemory(spec, memoryUri, {
      downtimeMs: input.downtimeMs ?? 300,
      bandwidthBytesPerSec: input.bandwidthBytesPerSec,
      destinationDisks: dst.destinationDisks(spec),
      onProgress: (p) => input.onProgress?.({ phase: 'memory', ...p }),
    });
    const tPaused = Date.now();

    // Source paused: the ready mirror holds no more pending writes; complete it without pivoting.
    await withQmp(srcQmp, async (q) => {
      await q.execute('block-job-cancel', { device: JOB });
      const deadline = Date.now() + 120_000;
      while ((await jobs(q)).some((j) => j.device === JOB)) {
        if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, `disk mirror of ${spec.id} does not finish`);
        await sleep(50);
      }
      await q.execute('blockdev-del', { 'node-name': TARGET });
    });

    switched = true;
    const mem = await src.switchover(spec);
    await withQmp(dstQmp, async (q) => {
      await removeExports(q, (id) => id === EXPORT);
      await q.execute('nbd-server-stop').catch(() => undefined);
    });
    await dst.resume(spec);
    const tRunning = Date.now();
    if (input.retireSource ?? true) await src.retire(spec);
    return {
      totalMs: tRunning - t0,
      diskReadyMs: tReady - t0,
      memoryMs: tPaused - tReady,
      qemuTotalMs: mem.totalMs,
      qemuDowntimeMs: mem.downtimeMs,
      memoryBytes: mem.transferredBytes,
      pausedMs: tRunning - tPaused,
    };
  } catch (err) {
    if (!switched) await rollback(src, dst, spec, srcQmp);
    throw err;
  }
}

async function rollback(
  src: ReturnType<typeof createQemuDriver>,
  dst: ReturnType<typeof createQemuDriver>,
  spec: InstanceSpec,
  srcQmp: string,
): Promise<void> {
  // Best effort, in the order that keeps the source whole: stop writing to the target, resume.
  await withQmp(srcQmp, async (q) => {
    if ((await jobs(q)).some((j) => j.device === JOB)) {
      await q.execute('block-job-cancel', { device: JOB, force: true }).catch(() => undefined);
      for (let i = 0; i < 200 && (await jobs(q)).some((j) => j.device === JOB); i++) await sleep(50);
    }
    await q.execute('blockdev-del', { 'node-name': TARGET }).catch(() => undefined);
  }).catch(() => undefined);
  await src.cancelMigration(spec).catch(() => undefined);
  await dst.abortDestination(spec).catch(() => undefined);
}
