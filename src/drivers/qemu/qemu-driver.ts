// The `qemu` hypervisor driver: QEMU processes started detached per instance, driven over QMP.
// All state lives in `<stateDir>/<instanceId>/` (sockets, pidfile, tracking rounds), so a worker
// that restarts finds its instances again. See docs/qemu-driver.md.
import { execFile } from 'node:child_process';
import { access, mkdir, open, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { HypervisorDriver, MemoryProgress, MemoryResult, RuntimeState } from '../driver.js';
import { totalDiskBytes, type DiskSpec, type InstanceSpec } from '../../shared/instance.js';
import type { BlockSource, DiskTarget } from '../../dataplane/types.js';
import { openLocalDiskTarget } from '../../dataplane/disk-target.js';
import type { Extent } from '../../shared/extents.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { withQmp, type QmpClient } from './qmp.js';
import { NbdBlockSource } from './nbd-client.js';
import { DEFAULT_QEMU, instancePaths, launchQemu, livePid, stopQemu, type InstancePaths } from './qemu-process.js';
import { DEFAULT_GRANULARITY, DISK_NODE, LIVE_EXPORT, ensureExport, forgetTracking, removeExports, startTracking, stopTracking, takeRound, takenRound, type TrackedDisk } from './dirty-tracking.js';
import { exists } from '../file-exists.js';
import { DowntimeLadder } from '../downtime-ladder.js';

const execFileP = promisify(execFile);

export interface QemuDriverOptions {
  /** Per-node directory holding one folder per instance. */
  stateDir: string;
  /** Where destination disks are created; default `<stateDir>/disks`. */
  diskDir?: string;
  /** Run QEMU inside this network namespace (tests; a lab worker already runs inside its own). */
  netns?: string;
  qemuBinary?: string;
  /** Poll interval for migration status. */
  pollMs?: number;
}

interface MigrationInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'expected-downtime'?: number;
  ram?: { transferred: number; remaining: number; total: number; 'dirty-pages-rate'?: number; 'dirty-sync-count'?: number; mbps?: number };
  'error-desc'?: string;
  'socket-address'?: Array<{ type: string; host?: string; port?: string }>;
}

/** Migration states in which the source still has (or may get back) a running guest. */
const IN_PROGRESS = new Set(['setup', 'active', 'pre-switchover', 'device', 'cancelling', 'wait-unplug']);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function memoryError(msg: string): FerryError {
  return new FerryError(ErrorTypes.MemoryMigrationFailed, msg);
}

/** What `retire({ keepDisks: true })` appends to the source disk's name. */
export const MIGRATED_SUFFIX = '.ferry-migrated';

export class QemuDriver implements HypervisorDriver {
  readonly kind = 'qemu' as const;
  // QEMU's pause-before-switchover capability: the source pauses with its disk still readable.
  readonly handover = 'pause-before-switchover' as const;
  readonly stateDir: string;
  readonly diskDir: string;
  private readonly pollMs: number;

  constructor(private readonly opts: QemuDriverOptions) {
    this.stateDir = resolve(opts.stateDir);
    this.diskDir = resolve(opts.diskDir ?? join(opts.stateDir, 'disks'));
    this.pollMs = opts.pollMs ?? 200;
  }

  paths(spec: InstanceSpec): InstancePaths {
    return instancePaths(this.stateDir, spec.id);
  }

  /** The one tracked disk of an instance: QEMU's `disk0` node, its state under the instance's folder. */
  private tracked(p: InstancePaths): TrackedDisk {
    return { node: DISK_NODE, nbdSocket: p.nbd, stateFile: p.tracking, roundsDir: p.rounds };
  }

  private qmp<T>(spec: InstanceSpec, fn: (q: QmpClient) => Promise<T>): Promise<T> {
    return withQmp(this.paths(spec).qmp, fn);
  }

  private async requireLive(spec: InstanceSpec): Promise<InstancePaths> {
    const p = this.paths(spec);
    if ((await livePid(p)) === null) {
      throw new FerryError(ErrorTypes.InstanceNotRunning, `instance ${spec.id} has no QEMU process on this node (state dir ${p.dir})`);
    }
    return p;
  }

  async state(spec: InstanceSpec): Promise<RuntimeState> {
    const p = this.paths(spec);
    if ((await livePid(p)) === null) return 'absent';
    const st = await withQmp(p.qmp, (q) => q.execute<{ status: string; running: boolean }>('query-status'));
    if (st.running) return 'running';
    if (st.status === 'inmigrate') return 'incoming';
    if (st.status === 'shutdown' || st.status === 'guest-panicked' || st.status === 'internal-error') return 'stopped';
    return 'paused';
  }

  async start(spec: InstanceSpec): Promise<void> {
    const disk = this.checkSpec(spec);
    const p = this.paths(spec);
    if ((await livePid(p)) !== null) return;
    await ensureDisk(disk.path, disk.bytes);
    await launchQemu({ spec, paths: p, diskPath: disk.path, incoming: false, netns: this.opts.netns, qemuBinary: this.opts.qemuBinary });
  }

  /** Validates the spec and returns its one disk: QEMU's command line, tracking and export know one. */
  private checkSpec(spec: InstanceSpec): DiskSpec {
    if (spec.hypervisor !== 'qemu') {
      throw new FerryError(ErrorTypes.HypervisorMismatch, `instance ${spec.id} is a ${spec.hypervisor} guest; this node runs QEMU`);
    }
    // `?? []`: a spec recorded before `disks` existed (it had diskPath) gets this message, not a TypeError.
    const [disk, ...more] = spec.disks ?? [];
    if (!disk || more.length > 0 || disk.kind !== 'file' || disk.format !== 'raw') {
      const has = (spec.disks ?? []).map((d) => `${d.vdev} (${d.kind}, ${d.format})`).join(', ') || 'no disk';
      throw new FerryError(ErrorTypes.BadInput, `the QEMU driver moves single-raw-disk guests (one raw image file); ${spec.id} has ${has}`);
    }
    if (!Number.isSafeInteger(disk.bytes) || disk.bytes <= 0 || disk.bytes % 512 !== 0) {
      throw new FerryError(ErrorTypes.BadInput, `disk size ${disk.bytes} of ${spec.id}/${disk.vdev} must be a positive multiple of 512`);
    }
    this.paths(spec); // validates the id
    return disk;
  }

  /** The spec's disk named `vdev`: a per-disk call for a disk the guest does not have is refused. */
  private diskNamed(spec: InstanceSpec, vdev: string): DiskSpec {
    const disk = this.checkSpec(spec);
    if (vdev !== disk.vdev) throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} has no disk ${JSON.stringify(vdev)}; its one disk is ${disk.vdev}`);
    return disk;
  }

  async checkMigratable(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const bin = this.opts.qemuBinary ?? DEFAULT_QEMU;
    try {
      await execFileP(bin, ['--version']);
    } catch {
      throw new FerryError(ErrorTypes.DriverError, `${bin} not found or not runnable on this node: install qemu-system-x86`);
    }
    for (const f of [spec.boot?.kernel, spec.boot?.initrd]) {
      if (f === undefined) continue;
      try {
        await access(f);
      } catch {
        throw new FerryError(ErrorTypes.BadInput, `boot file ${f} of ${spec.id} is missing on this node`);
      }
    }
    if (!spec.boot?.kernel) throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} has no boot kernel`);
  }

  // --- destination side ---

  /** Where the destination disk lives: one file per instance, named by id (validated) alone. */
  private destinationPath(spec: InstanceSpec): string {
    instancePaths(this.stateDir, spec.id);
    return join(this.diskDir, `${spec.id}.raw`);
  }

  destinationDisks(spec: InstanceSpec): DiskSpec[] {
    return [{ ...this.checkSpec(spec), path: this.destinationPath(spec) }];
  }

  async checkDestination(spec: InstanceSpec): Promise<void> {
    const disks = this.destinationDisks(spec);
    const dir = dirname(this.destinationPath(spec));
    await mkdir(dir, { recursive: true });
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    const need = totalDiskBytes({ disks });
    if (free < need) {
      throw new FerryError(ErrorTypes.DestinationDiskFull, `${free} bytes free in ${dir}, the disk of ${spec.id} needs ${need}`);
    }
  }

  async openDestinationDisk(spec: InstanceSpec, vdev: string): Promise<DiskTarget> {
    this.diskNamed(spec, vdev);
    return openLocalDiskTarget(this.destinationPath(spec));
  }

  async prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }> {
    const source = this.checkSpec(spec);
    if (!/^[0-9a-zA-Z.-]{1,253}$/.test(opts.listenHost)) throw new FerryError(ErrorTypes.BadInput, `bad listen host ${JSON.stringify(opts.listenHost)}`);
    const p = this.paths(spec);
    const disk = this.destinationPath(spec);
    if (resolve(disk) === resolve(source.path) && (await livePid(p)) === null && (await exists(disk))) {
      // The source's own disk on this very host: never overwrite it.
      throw new FerryError(ErrorTypes.InvalidDestination, `destination disk ${disk} is the source disk of ${spec.id}`);
    }
    if ((await livePid(p)) === null) {
      await rm(p.memoryUri, { force: true });
      await ensureDisk(disk, source.bytes);
      await launchQemu({ spec, paths: p, diskPath: disk, incoming: true, netns: this.opts.netns, qemuBinary: this.opts.qemuBinary });
    }
    try {
      const saved = (await readFile(p.memoryUri, 'utf8')).trim();
      if (saved) return { memoryUri: saved };
    } catch {
      // not listening yet
    }
    const memoryUri = await this.qmp(spec, async (q) => {
      const st = await q.execute<{ status: string }>('query-status');
      if (st.status !== 'inmigrate') throw new FerryError(ErrorTypes.DriverError, `destination ${spec.id} is ${st.status}, not waiting for memory`);
      const listening = (i: MigrationInfo) => i['socket-address']?.find((a) => a.port && a.port !== '0')?.port;
      // A crash after migrate-incoming but before saving the URI: QEMU already listens.
      let port = listening(await q.execute<MigrationInfo>('query-migrate'));
      if (!port) {
        // Port 0: the kernel picks a free port in this namespace; QEMU reports it in socket-address.
        await q.execute('migrate-incoming', { uri: `tcp:${opts.listenHost}:0` });
        port = listening(await q.execute<MigrationInfo>('query-migrate'));
      }
      if (!port) throw new FerryError(ErrorTypes.DriverError, `QEMU did not report the incoming migration port of ${spec.id}`);
      return `tcp:${opts.listenHost}:${port}`;
    });
    await writeFile(p.memoryUri, memoryUri);
    return { memoryUri };
  }

  async resume(spec: InstanceSpec): Promise<void> {
    await this.requireLive(spec);
    const deadline = Date.now() + 300_000;
    for (;;) {
      const done = await this.qmp(spec, async (q) => {
        const st = await q.execute<{ status: string; running: boolean }>('query-status');
        if (st.running) return true;
        if (st.status === 'inmigrate') {
          const mi = await q.execute<MigrationInfo>('query-migrate');
          if (mi.status === 'failed') throw memoryError(`incoming migration of ${spec.id} failed: ${mi['error-desc'] ?? 'no reason given'}`);
          return false; // memory still arriving
        }
        await q.execute('cont');
        return true;
      });
      if (done) return;
      if (Date.now() > deadline) throw memoryError(`destination ${spec.id} still waiting for memory after 300 s`);
      await sleep(this.pollMs);
    }
  }

  async abortDestination(spec: InstanceSpec): Promise<void> {
    const p = this.paths(spec);
    if ((await livePid(p)) !== null && (await this.state(spec)) === 'running') {
      throw new FerryError(ErrorTypes.DriverError, `refusing to abort ${spec.id} here: it already runs on this node`);
    }
    await stopQemu(p, 0);
    await rm(this.destinationPath(spec), { force: true });
    await rm(p.dir, { recursive: true, force: true });
  }

  // --- source side ---

  async startDirtyTracking(spec: InstanceSpec): Promise<void> {
    const p = await this.requireLive(spec);
    const g = spec.extra?.dirtyGranularity;
    await withQmp(p.qmp, (q) => startTracking(q, this.tracked(p), typeof g === 'number' ? g : DEFAULT_GRANULARITY));
  }

  async takeDirtyRound(spec: InstanceSpec, round: number): Promise<Record<string, Extent[]>> {
    const disk = this.checkSpec(spec);
    const p = this.paths(spec);
    const taken = await takenRound(this.tracked(p), round);
    if (taken) return { [disk.vdev]: taken };
    await this.requireLive(spec);
    return { [disk.vdev]: await withQmp(p.qmp, (q) => takeRound(q, this.tracked(p), round)) };
  }

  async openDisk(spec: InstanceSpec, vdev: string): Promise<BlockSource> {
    this.diskNamed(spec, vdev);
    const p = await this.requireLive(spec);
    await withQmp(p.qmp, (q) => ensureExport(q, this.tracked(p), LIVE_EXPORT));
    return NbdBlockSource.open(p.nbd, LIVE_EXPORT);
  }

  async stopDirtyTracking(spec: InstanceSpec): Promise<void> {
    const p = this.paths(spec);
    if ((await livePid(p)) === null) {
      await forgetTracking(this.tracked(p));
      return;
    }
    await withQmp(p.qmp, (q) => stopTracking(q, this.tracked(p)));
  }

  // opts.destinationDisks is not read: the destination QEMU opened its own disk in prepareDestination.
  async migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: { downtimeMs: number; bandwidthBytesPerSec?: number; destinationDisks: DiskSpec[]; onProgress?: (p: MemoryProgress) => void },
  ): Promise<void> {
    if (!/^tcp:[0-9a-zA-Z.-]+:\d{1,5}$/.test(memoryUri)) throw new FerryError(ErrorTypes.BadInput, `bad memory URI ${JSON.stringify(memoryUri)}`);
    if (!Number.isFinite(opts.downtimeMs) || opts.downtimeMs <= 0) throw new FerryError(ErrorTypes.BadInput, `bad downtime ${opts.downtimeMs}`);
    await this.requireLive(spec);
    const ladder = new DowntimeLadder(opts.downtimeMs);
    await this.qmp(spec, async (q) => {
      const info = await q.execute<MigrationInfo>('query-migrate');
      if (info.status && IN_PROGRESS.has(info.status)) return; // a retry: the migration already runs
      if (info.status === 'completed') return;
      // auto-converge: a guest that dirties memory faster than the link (or the cap) carries it is
      // throttled until the last round fits the downtime limit, instead of pre-copying forever.
      await q.execute('migrate-set-capabilities', {
        capabilities: [
          { capability: 'pause-before-switchover', state: true },
          { capability: 'auto-converge', state: true },
        ],
      });
      await q.execute('migrate-set-parameters', {
        // The ladder's first rung; it rises towards opts.downtimeMs only when pre-copy stalls.
        'downtime-limit': ladder.currentMs,
        // QEMU's default cap is 32 MiB/s; without a cap from the caller, let the link decide.
        'max-bandwidth': Math.round(opts.bandwidthBytesPerSec && opts.bandwidthBytesPerSec > 0 ? opts.bandwidthBytesPerSec : 1e12),
      });
      await q.execute('migrate', { uri: memoryUri });
    });
    for (;;) {
      const info = await this.qmp(spec, (q) => q.execute<MigrationInfo>('query-migrate'));
      opts.onProgress?.({
        status: info.status ?? 'none',
        transferredBytes: info.ram?.transferred ?? 0,
        remainingBytes: info.ram?.remaining ?? 0,
        totalBytes: info.ram?.total ?? 0,
        dirtyPagesRate: info.ram?.['dirty-pages-rate'],
        iteration: info.ram?.['dirty-sync-count'],
        // QEMU's mbps is megabits (10^6) per second.
        rateBytesPerSec: info.ram?.mbps !== undefined ? Math.round((info.ram.mbps * 1e6) / 8) : undefined,
      });
      const raised = info.status === 'active' ? ladder.observe(info.ram?.['dirty-sync-count'] ?? 0, info.ram?.remaining ?? 0) : undefined;
      if (raised !== undefined) await this.qmp(spec, (q) => q.execute('migrate-set-parameters', { 'downtime-limit': raised }));
      switch (info.status) {
        case 'pre-switchover':
        case 'completed':
          return;
        case 'failed':
          throw memoryError(`memory migration of ${spec.id} failed: ${info['error-desc'] ?? 'no reason given'}`);
        case 'cancelled':
        case 'cancelling':
          throw new FerryError(ErrorTypes.MigrationCancelled, `memory migration of ${spec.id} was cancelled`);
        case undefined:
        case 'none':
          throw memoryError(`memory migration of ${spec.id} is not running`);
      }
      await sleep(this.pollMs);
    }
  }

  async switchover(spec: InstanceSpec): Promise<MemoryResult> {
    await this.requireLive(spec);
    const first = await this.qmp(spec, async (q) => {
      const info = await q.execute<MigrationInfo>('query-migrate');
      if (info.status === 'completed') return info;
      if (info.status !== 'pre-switchover') throw memoryError(`cannot switch ${spec.id} over: migration is ${info.status ?? 'not running'}`);
      // QEMU cannot inactivate a disk that an NBD export holds; the final sync is done by now.
      await removeExports(q);
      await q.execute('nbd-server-stop').catch(() => undefined);
      await q.execute('migrate-continue', { state: 'pre-switchover' });
      return null;
    });
    let info = first;
    while (!info) {
      await sleep(this.pollMs);
      const mi = await this.qmp(spec, (q) => q.execute<MigrationInfo>('query-migrate'));
      if (mi.status === 'completed') info = mi;
      else if (mi.status === 'failed' || mi.status === 'cancelled') {
        throw memoryError(`switchover of ${spec.id} failed: ${mi['error-desc'] ?? mi.status}`);
      }
    }
    return { totalMs: info['total-time'] ?? 0, downtimeMs: info.downtime, transferredBytes: info.ram?.transferred ?? 0 };
  }

  async cancelMigration(spec: InstanceSpec): Promise<void> {
    const p = this.paths(spec);
    if ((await livePid(p)) === null) throw new FerryError(ErrorTypes.InstanceNotRunning, `source ${spec.id} has no QEMU process: nothing to resume`);
    let info = await this.qmp(spec, (q) => q.execute<MigrationInfo>('query-migrate'));
    if (info.status === 'completed') {
      throw new FerryError(ErrorTypes.DriverError, `migration of ${spec.id} already switched over; it cannot be cancelled`);
    }
    if (info.status && IN_PROGRESS.has(info.status)) {
      await this.qmp(spec, (q) => q.execute('migrate_cancel'));
      const deadline = Date.now() + 60_000;
      while (info.status && IN_PROGRESS.has(info.status)) {
        if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, `migration of ${spec.id} does not cancel`);
        await sleep(this.pollMs);
        info = await this.qmp(spec, (q) => q.execute<MigrationInfo>('query-migrate'));
      }
      if (info.status === 'completed') throw new FerryError(ErrorTypes.DriverError, `migration of ${spec.id} completed before the cancel took effect`);
    }
    await this.qmp(spec, async (q) => {
      const st = await q.execute<{ status: string; running: boolean }>('query-status');
      if (!st.running && st.status !== 'shutdown') await q.execute('cont');
    });
  }

  async retire(spec: InstanceSpec, opts: { keepDisks?: boolean } = {}): Promise<void> {
    const disk = this.checkSpec(spec);
    const p = this.paths(spec);
    if ((await livePid(p)) !== null) {
      const st = await this.state(spec);
      if (st === 'running') throw new FerryError(ErrorTypes.DriverError, `refusing to retire ${spec.id}: it is still running on this node`);
      await withQmp(p.qmp, (q) => q.execute('quit')).catch(() => undefined);
      await stopQemu(p, 5000);
    }
    if (opts.keepDisks) await renameAside(disk.path);
    else await rm(disk.path, { force: true });
    await rm(p.dir, { recursive: true, force: true });
  }
}

/** Moves a retired disk out of the way, keeping its data; gone already means a retry did it. */
async function renameAside(path: string): Promise<void> {
  try {
    await rename(path, `${path}${MIGRATED_SUFFIX}`);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}


/** A sparse raw disk of `bytes`; an existing one of the same size is kept (idempotent prepare). */
async function ensureDisk(path: string, bytes: number): Promise<void> {
  try {
    const s = await stat(path);
    if (s.size !== bytes) throw new FerryError(ErrorTypes.BadInput, `disk ${path} is ${s.size} bytes, expected ${bytes}`);
    return;
  } catch (e) {
    if (e instanceof FerryError) throw e;
  }
  await mkdir(dirname(path), { recursive: true });
  const fh = await open(path, 'wx');
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

export function createQemuDriver(opts: QemuDriverOptions): QemuDriver {
  return new QemuDriver(opts);
}
