// The `xen` hypervisor driver: `xl`, `dmsetup` and LVM on a Xen host's dom0, through an Executor
// (local when the worker runs in dom0, SSH otherwise). It moves the guests operators run: domains
// made by `xl create` from their own config, disks on LVM logical volumes or image files. All
// state lives on the host, under `<stateDir>/<id>/` (trackers' state, frozen rounds, the migration
// record), so a restarted worker finds everything again. See docs/xen.md.
//
// Handover (`paused-on-destination`): `xl` has no pre-switchover pause like QEMU. `xl migrate -p`
// returns once the destination holds the whole domain, PAUSED, and the source domain has been
// suspended and destroyed; it sends the guest's own configuration (libxl's JSON, or with `-C` the
// same with the destination's disk paths). The workflow's final sync then reads the source disks
// (their trackers still in place, nothing writes them any more) into the destination's; `resume`
// unpauses the destination. The real point of no return is the end of `migrateMemory`.
import type { Discovery, HypervisorDriver, MemoryProgress, MemoryResult, RuntimeState } from '../driver.js';
import type { BlockSource, DiskTarget } from '../../dataplane/types.js';
import type { Extent } from '../../shared/extents.js';
import { diskOf, type DiskSpec, type InstanceSpec } from '../../shared/instance.js';
import { ID_PATTERN } from '../../shared/names.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { runOk, shellQuote, type Executor } from './executor.js';
import { readState, writeState } from './disk-tracker.js';
import { trackerFor } from './trackers.js';
import { describeDomain, discoverDomains, domainJson, Refusal } from './xen-discovery.js';
import { xlConfigFor } from './xl-domain.js';
import { checkRoom, createDisk, destinationDisk, openHostDisk, removeDisk, renameAside, type XenStorageOptions } from './xen-storage.js';

export interface XenDriverOptions {
  /** Runs commands on this Xen host's dom0. */
  executor: Executor;
  /** Directory ON THE HOST for per-instance state. */
  stateDir: string;
  /** Where incoming guests' disks go on this host. */
  storage?: XenStorageOptions;
  /**
   * This dom0's address on the migration network, where the source's `xl migrate` reaches it over
   * ssh. Default: the worker's data address (right when the worker runs inside dom0).
   */
  migrationAddress?: string;
  /**
   * Transport for `xl migrate -s` as an argv (default: plain `ssh`). xl hands the joined string to
   * sh, so each word is quoted here.
   */
  migrateSshCommand?: string[];
  /** Limit for one `xl migrate` (ms); default 30 min. */
  migrateTimeoutMs?: number;
  pollMs?: number;
}

const HOST_RE = /^[0-9a-zA-Z.-]{1,253}$/;
export const MEMORY_URI_PREFIX = 'xl-ssh:';

interface MigrationRecord {
  totalMs: number;
  peer: string;
  /** Set when xl ended in an undefined state and Ferry settled it by looking at both hosts. */
  settled?: string;
}

/** What prepareDestination created here, so a rollback removes exactly that and nothing of the operator's. */
interface IncomingRecord {
  created: DiskSpec[];
}

interface XlDomain {
  name: string;
  id: number;
  state: string;
}

/** Parses `xl list` rows: Name ID Mem VCPUs State Time(s). */
export function parseXlList(out: string): XlDomain[] {
  const rows: XlDomain[] = [];
  for (const line of out.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 6 || !/^\d+$/.test(f[1]!)) continue;
    rows.push({ name: f[0]!, id: Number(f[1]), state: f[4]! });
  }
  return rows;
}

function stateOf(flags: string): RuntimeState {
  if (/[scd]/.test(flags)) return 'stopped';
  if (flags.includes('p')) return 'paused';
  return 'running';
}

export class XenDriver implements HypervisorDriver {
  readonly kind = 'xen' as const;
  readonly handover = 'paused-on-destination' as const;
  private readonly ex: Executor;
  readonly stateDir: string;
  private readonly pollMs: number;

  constructor(private readonly opts: XenDriverOptions) {
    this.ex = opts.executor;
    if (!opts.stateDir.startsWith('/')) throw new FerryError(ErrorTypes.BadInput, `xen stateDir must be absolute on the host, got ${opts.stateDir}`);
    this.stateDir = opts.stateDir.replace(/\/+$/, '');
    this.pollMs = opts.pollMs ?? 500;
  }

  private dir(spec: Pick<InstanceSpec, 'id'>): string {
    if (!ID_PATTERN.test(spec.id)) throw new FerryError(ErrorTypes.BadInput, `bad instance id ${JSON.stringify(spec.id)}`);
    return `${this.stateDir}/${spec.id}`;
  }

  private checkSpec(spec: InstanceSpec): void {
    if (spec.hypervisor !== 'xen') {
      throw new FerryError(ErrorTypes.HypervisorMismatch, `instance ${spec.id} is a ${spec.hypervisor} guest; this node runs Xen`);
    }
    for (const d of spec.disks) {
      if (!Number.isSafeInteger(d.bytes) || d.bytes <= 0 || d.bytes % 512 !== 0) throw new FerryError(ErrorTypes.BadInput, `disk ${d.vdev} size ${d.bytes} must be a positive multiple of 512`);
      if (!d.path.startsWith('/') || /[\0\n]/.test(d.path)) throw new FerryError(ErrorTypes.BadInput, `disk path ${JSON.stringify(d.path)} must be absolute`);
    }
    this.dir(spec);
  }

  private tracker(spec: InstanceSpec, disk: DiskSpec) {
    return trackerFor({ ex: this.ex, dir: this.dir(spec), id: spec.id, disk });
  }

  private async list(): Promise<XlDomain[]> {
    return parseXlList(await runOk(this.ex, 'xl', ['list']));
  }

  private async domain(name: string): Promise<XlDomain | undefined> {
    return (await this.list()).find((d) => d.name === name);
  }

  async state(spec: InstanceSpec): Promise<RuntimeState> {
    this.dir(spec);
    const all = await this.list();
    const d = all.find((x) => x.name === spec.id);
    if (d) return stateOf(d.state);
    if (all.some((x) => x.name === `${spec.id}--incoming`)) return 'incoming';
    return 'absent';
  }

  discover(): Promise<Discovery> {
    return discoverDomains(this.ex, this.stateDir);
  }

  async checkMigratable(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const info = await runOk(this.ex, 'xl', ['info']);
    const caps = /^virt_caps\s*:\s*(.*)$/m.exec(info)?.[1]?.trim() ?? '';
    const xenCaps = /^xen_caps\s*:\s*(.*)$/m.exec(info)?.[1]?.trim() ?? '';
    const live = await domainJson(this.ex, spec.id).catch(() => undefined);
    const type = live?.config.c_info.type ?? spec.guestType ?? 'pvh';
    const words = caps.split(/\s+/);
    if (type === 'pv' && !words.includes('shadow')) {
      // PV log-dirty (what `xl migrate` needs to pre-copy memory) is implemented by shadow paging;
      // a Xen built without CONFIG_SHADOW_PAGING fails it mid-migration ("Failed to enable
      // logdirty: 95"). Refuse here, before anything is created or paused.
      throw new FerryError(
        ErrorTypes.PvNeedsShadowPaging,
        `${spec.id} is a PV guest, and Xen on this host has no shadow paging (virt_caps: ${caps || 'none reported'}), which live migration of PV guests needs for log-dirty tracking. Convert the guest to PVH, or run a Xen built with CONFIG_SHADOW_PAGING.`,
        { virtCaps: caps, xenCaps },
      );
    }
    if ((type === 'pvh' || type === 'hvm') && !words.includes('hvm')) {
      throw new FerryError(ErrorTypes.InvalidDestination, `${spec.id} is a ${type} guest, and this Xen host offers no HVM support (virt_caps: ${caps})`);
    }
    if (!live) return; // the destination: the guest does not run here
    // The source: the guest as the host describes it now must still be one Ferry can move, its
    // disks the ones the inventory knows.
    try {
      const now = await describeDomain(this.ex, this.stateDir, live);
      const known = JSON.stringify(spec.disks.map((d) => [d.vdev, d.path, d.bytes]));
      if (JSON.stringify(now.disks.map((d) => [d.vdev, d.path, d.bytes])) !== known) {
        throw new FerryError(ErrorTypes.BadInput, `${spec.id}'s disks changed since it was imported (now ${now.disks.map((d) => `${d.vdev}=${d.path}`).join(', ')}): run \`ferry node sync\` first`);
      }
    } catch (err) {
      if (err instanceof Refusal) throw new FerryError(ErrorTypes.CannotTrack, `${spec.id} cannot be live-migrated by Ferry: ${err.message}`);
      throw err;
    }
  }

  // --- destination side ---

  destinationDisks(spec: InstanceSpec): DiskSpec[] {
    return spec.disks.map((d) => destinationDisk(d, this.opts.storage ?? {}));
  }

  async checkDestination(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const missing: string[] = [];
    for (const [what, path] of [['kernel', spec.boot?.kernel], ['ramdisk', spec.boot?.initrd]] as const) {
      if (path && (await this.ex.run('test', ['-r', path])).code !== 0) missing.push(`${what} ${path}`);
    }
    for (const n of spec.nics ?? []) {
      if (n.bridge && (await this.ex.run('ip', ['link', 'show', 'dev', n.bridge])).code !== 0) missing.push(`bridge ${n.bridge}`);
    }
    if (missing.length) throw new FerryError(ErrorTypes.InvalidDestination, `${this.ex.where} lacks what ${spec.id}'s config names: ${missing.join(', ')}`);
    await checkRoom(this.ex, this.destinationDisks(spec));
  }

  openDestinationDisk(spec: InstanceSpec, vdev: string): Promise<DiskTarget> {
    const d = diskOf({ id: spec.id, disks: this.destinationDisks(spec) }, vdev);
    return openHostDisk(this.ex, d.path, d.kind, d.bytes, 'r+');
  }

  private incomingFile(spec: InstanceSpec) {
    return `${this.dir(spec)}/incoming.json`;
  }

  async prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }> {
    this.checkSpec(spec);
    const listenHost = this.opts.migrationAddress ?? opts.listenHost;
    if (!HOST_RE.test(listenHost)) throw new FerryError(ErrorTypes.BadInput, `bad listen host ${JSON.stringify(listenHost)}`);
    const st = await this.state(spec);
    if (st === 'running') throw new FerryError(ErrorTypes.InvalidDestination, `${spec.id} already runs on this host`);
    await runOk(this.ex, 'mkdir', ['-p', this.dir(spec)]);
    const rec = (await readState<IncomingRecord>(this.ex, this.incomingFile(spec))) ?? { created: [] };
    for (const d of this.destinationDisks(spec)) {
      if (!rec.created.some((c) => c.path === d.path)) {
        // Something that appeared since checkDestination is not ours to take, nor to remove later.
        if ((await this.ex.run('test', ['-e', d.path])).code === 0) {
          throw new FerryError(ErrorTypes.InvalidDestination, `${d.path} (for ${d.vdev} of ${spec.id}) appeared on ${this.ex.where} since the checks: not touching it`);
        }
        // Recorded first: a crash between the two leaves a record of a disk that may not exist
        // (created on the retry, or removing it is a no-op), never a disk without a record.
        rec.created.push(d);
        await writeState(this.ex, this.incomingFile(spec), rec);
      }
      await createDisk(this.ex, d);
    }
    // xl migrate-receive is started by the source over ssh: nothing listens until then.
    return { memoryUri: `${MEMORY_URI_PREFIX}${listenHost}` };
  }

  async resume(spec: InstanceSpec): Promise<void> {
    const deadline = Date.now() + 300_000;
    for (;;) {
      const st = await this.state(spec);
      if (st === 'running') break;
      if (st === 'paused') {
        await runOk(this.ex, 'xl', ['unpause', spec.id]);
        break;
      }
      if (st === 'absent' || st === 'stopped') {
        throw new FerryError(ErrorTypes.MemoryMigrationFailed, `cannot resume ${spec.id} on this host: it is ${st}`);
      }
      if (Date.now() > deadline) throw new FerryError(ErrorTypes.MemoryMigrationFailed, `${spec.id} still incoming after 300 s`);
      await sleep(this.pollMs);
    }
    // The disks are the guest's now: no longer Ferry's to remove on a rollback. Nothing else of
    // Ferry's stays on this host.
    await runOk(this.ex, 'rm', ['-rf', '--', this.dir(spec)]);
  }

  async abortDestination(spec: InstanceSpec): Promise<void> {
    // xl's receiver renames `<id>--incoming` to `<id>` only once the sender gave it the guest: a
    // domain under the instance's own name here IS the guest (checkDestination refuses a host
    // that has one). Never destroy it, nor its disks.
    const st = await this.state(spec);
    if (st !== 'absent' && st !== 'incoming') {
      throw new FerryError(ErrorTypes.DriverError, `refusing to remove ${spec.id} from ${this.ex.where}: xl already handed the guest over to this host (${st}); finish the migration instead`);
    }
    if (await this.domain(`${spec.id}--incoming`)) await this.ex.run('xl', ['destroy', `${spec.id}--incoming`]);
    const rec = await readState<IncomingRecord>(this.ex, this.incomingFile(spec));
    for (const d of rec?.created ?? []) await removeDisk(this.ex, d);
    await runOk(this.ex, 'rm', ['-rf', '--', this.dir(spec)]);
  }

  // --- source side ---

  private roundFile(spec: InstanceSpec, round: number) {
    return `${this.dir(spec)}/rounds/${round}.json`;
  }

  async startDirtyTracking(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    // Tracking starts before the bulk copy and before any handover: rounds or a handover record
    // found here are a finished or failed earlier run's, never this one's.
    await runOk(this.ex, 'rm', ['-rf', '--', `${this.dir(spec)}/rounds`, this.migrationFile(spec)]);
    await runOk(this.ex, 'mkdir', ['-p', `${this.dir(spec)}/rounds`]);
    for (const d of spec.disks) {
      const t = this.tracker(spec, d);
      const why = await t.refusal();
      if (why) throw new FerryError(ErrorTypes.CannotTrack, `cannot track writes to ${d.vdev} of ${spec.id}: ${why}`);
      await t.start();
    }
  }

  async takeDirtyRound(spec: InstanceSpec, round: number): Promise<Record<string, Extent[]>> {
    if (!Number.isInteger(round) || round < 1) throw new FerryError(ErrorTypes.BadInput, `bad round ${round}`);
    const done = await readState<Record<string, Extent[]>>(this.ex, this.roundFile(spec, round));
    if (done) return done;
    // After xl's handover nothing writes the source disks any more: the trackers may drain.
    const final = (await this.state(spec)) === 'absent';
    const out: Record<string, Extent[]> = {};
    // Each tracker answers a retry of round n with at least its first answer, so a crash or a
    // failure of one disk before this file is written loses nothing; the file makes the round's
    // answer final once it is whole.
    for (const d of spec.disks) out[d.vdev] = await this.tracker(spec, d).round(round, final);
    await writeState(this.ex, this.roundFile(spec, round), out);
    return out;
  }

  async openDisk(spec: InstanceSpec, vdev: string): Promise<BlockSource> {
    this.checkSpec(spec);
    const d = diskOf(spec, vdev);
    const f = await openHostDisk(this.ex, await this.tracker(spec, d).readPath(), d.kind, d.bytes, 'r');
    return {
      size: d.bytes,
      read: (offset, length) => f.read(offset, Math.min(length, d.bytes - offset)),
      close: () => f.close(),
    };
  }

  /** sha256sum on the host: reading the disk through SFTP would cost far more than hashing it there. */
  async digestDisk(spec: InstanceSpec, side: 'source' | 'destination', vdev: string): Promise<string> {
    this.checkSpec(spec);
    const src = diskOf(spec, vdev);
    const d = side === 'source' ? { ...src, path: await this.tracker(spec, src).readPath() } : diskOf({ id: spec.id, disks: this.destinationDisks(spec) }, vdev);
    if (d.kind === 'lv' || d.path.startsWith('/dev/')) await runOk(this.ex, 'blockdev', ['--flushbufs', d.path]);
    const out = await runOk(this.ex, 'sha256sum', ['--', d.path], { timeoutMs: 30 * 60_000 });
    const hex = /^([0-9a-f]{64})\s/.exec(out)?.[1];
    if (!hex) throw new FerryError(ErrorTypes.DriverError, `unexpected sha256sum output on ${this.ex.where}: ${out.trim()}`);
    return hex;
  }

  async stopDirtyTracking(spec: InstanceSpec): Promise<void> {
    // Every disk, even when one fails: one stuck tracker must not leave the others in place.
    const failed: string[] = [];
    for (const d of spec.disks) {
      await this.tracker(spec, d)
        .stop()
        .catch((err: Error) => failed.push(`${d.vdev}: ${err.message}`));
    }
    if (failed.length) throw new FerryError(ErrorTypes.DriverError, `could not remove the write tracking of ${spec.id}: ${failed.join('; ')}`);
    await runOk(this.ex, 'rm', ['-rf', '--', `${this.dir(spec)}/rounds`]);
    // Rolled back: nothing of Ferry's stays (a migration record, if any, keeps the folder).
    await this.ex.run('rmdir', ['--', this.dir(spec)]);
  }

  private migrationFile(spec: InstanceSpec) {
    return `${this.dir(spec)}/migration.json`;
  }

  async migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: { downtimeMs: number; bandwidthBytesPerSec?: number; destinationDisks: DiskSpec[]; onProgress?: (p: MemoryProgress) => void },
  ): Promise<void> {
    if (!memoryUri.startsWith(MEMORY_URI_PREFIX) || !HOST_RE.test(memoryUri.slice(MEMORY_URI_PREFIX.length))) {
      throw new FerryError(ErrorTypes.BadInput, `bad Xen memory URI ${JSON.stringify(memoryUri)} (expected ${MEMORY_URI_PREFIX}HOST)`);
    }
    const peer = memoryUri.slice(MEMORY_URI_PREFIX.length);
    // A retry after the handover: the domain is already on the peer.
    if (await readState<MigrationRecord>(this.ex, this.migrationFile(spec))) return;
    const st = await this.state(spec);
    if (st === 'absent') {
      // A retry after a worker died between xl's success and our record: trust only what the
      // peer shows (the domain there under its own name), never assume.
      const there = await this.peerList(peer);
      if (typeof there !== 'string' && there.some((d) => d.name === spec.id)) {
        await writeState(this.ex, this.migrationFile(spec), { totalMs: 0, peer } satisfies MigrationRecord);
        return;
      }
      // The peer could not be asked: the guest may be there. Retry rather than conclude.
      if (typeof there === 'string') throw new FerryError(ErrorTypes.MemoryMigrationFailed, `${spec.id} is not on this host, and ${peer} cannot be asked: ${there}`);
      throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is not on this host, and ${peer} shows ${describe(there)}: nothing to migrate`);
    }
    if (st !== 'running' && st !== 'paused') throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is ${st} here: nothing to migrate`);
    // xl would hand the guest over even if a destination disk vanished since prepareDestination
    // (measured: the domain arrives without a working disk). Check first.
    for (const d of opts.destinationDisks) {
      const r = await this.onPeer(peer, ['test', '-e', d.path]);
      if (r.code !== 0) {
        throw new FerryError(ErrorTypes.MigrationRefused, `${peer} has no ${d.path} for ${d.vdev} of ${spec.id} (prepareDestination made it; something removed it): not starting xl migrate. ${r.stderr.trim()}`);
      }
    }
    // The guest's own configuration travels with it; only where a disk lives elsewhere on the
    // destination does xl get a copy with those paths (-C).
    const moved = opts.destinationDisks.filter((d) => diskOf(spec, d.vdev).path !== d.path);
    const config: string[] = [];
    if (moved.length) {
      const live = await domainJson(this.ex, spec.id);
      if (!live) throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is not in xl list -l`);
      const cfgPath = `${this.dir(spec)}/migrate.cfg`;
      await this.ex.writeFile(cfgPath, xlConfigFor(live, Object.fromEntries(moved.map((d) => [d.vdev, d.path]))));
      config.push('-C', cfgPath);
    }
    const memBytes = spec.memoryMiB * 1024 * 1024;
    opts.onProgress?.({ status: 'xl-migrate', transferredBytes: 0, remainingBytes: memBytes, totalBytes: memBytes });
    const t0 = Date.now();
    // -p: the destination stays paused, so the final disk sync can happen before it runs.
    // xl has no bandwidth or downtime knob; the options are accepted and not applied (docs/xen.md).
    const transport = this.opts.migrateSshCommand?.length ? ['-s', this.opts.migrateSshCommand.map(shellQuote).join(' ')] : [];
    const r = await this.ex.run('xl', ['migrate', ...transport, ...config, '-p', spec.id, peer], { timeoutMs: this.opts.migrateTimeoutMs ?? 30 * 60_000 });
    const totalMs = Date.now() - t0;
    const tail = (r.stderr || r.stdout).trim().split('\n').slice(-8).join('\n');
    if (r.code === 0) {
      await writeState(this.ex, this.migrationFile(spec), { totalMs, peer } satisfies MigrationRecord);
      opts.onProgress?.({ status: 'completed', transferredBytes: memBytes, remainingBytes: 0, totalBytes: memBytes });
      return;
    }
    if (/resuming at sender/i.test(r.stderr) && (await this.state(spec)) === 'running') {
      throw new FerryError(ErrorTypes.MigrationRefused, `xl migrate of ${spec.id} to ${peer} failed; the guest was resumed here:\n${tail}`);
    }
    // "Domain state is now undefined" or anything unexpected: never guess, look on both hosts.
    return this.settleUndefined(spec, peer, totalMs, r.code, tail);
  }

  /**
   * After a failed `xl migrate` that did not resume the sender, find out which end holds the
   * guest. xl's receiver renames `<id>--incoming` to `<id>` only after the sender's permission to
   * go, so a domain under the instance's own name on the destination means the handover happened:
   * record it, and the workflow rolls forward from there. Anything else is reported, not guessed.
   */
  private async settleUndefined(spec: InstanceSpec, peer: string, totalMs: number, code: number, tail: string): Promise<void> {
    const here = (await this.list()).filter((d) => d.name === spec.id || d.name.startsWith(`${spec.id}--`));
    const there = await this.peerList(peer);
    const where = `source ${describe(here)}, destination ${describe(there)}`;
    const located = { source: here, destination: there };
    const runningHere = here.find((d) => d.name === spec.id && stateOf(d.state) !== 'stopped');
    if (runningHere) {
      throw new FerryError(ErrorTypes.MemoryMigrationFailed, `xl migrate of ${spec.id} to ${peer} failed (exit ${code}); the guest is still here (${where}). xl said:\n${tail}`, located);
    }
    const handed = typeof there === 'string' ? undefined : there.find((d) => d.name === spec.id && stateOf(d.state) !== 'stopped');
    if (handed) {
      const settled = `xl left the state undefined (exit ${code}); found ${where}: the destination holds ${spec.id}, so the handover happened`;
      await writeState(this.ex, this.migrationFile(spec), { totalMs, peer, settled } satisfies MigrationRecord);
      return;
    }
    throw new FerryError(
      ErrorTypes.GuestStateUndefined,
      `xl migrate of ${spec.id} to ${peer} failed (exit ${code}) and no host runs the guest: ${where}. Ferry will not guess: inspect both hosts (a suspended ${spec.id}--migratedaway on the source is the guest's last state). xl said:\n${tail}`,
      located,
    );
  }

  /** Runs a command on the peer dom0, through the same root ssh trust `xl migrate` uses. */
  private onPeer(peer: string, cmd: string[]) {
    // ssh joins the words for the peer's shell: each is quoted, so a path stays one word.
    return this.ex.run('ssh', ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', '--', peer, ...cmd.map(shellQuote)]);
  }

  /** `xl list` on the peer. */
  private async peerList(peer: string): Promise<XlDomain[] | string> {
    const r = await this.onPeer(peer, ['xl', 'list']);
    if (r.code !== 0) return `unknown (ssh ${peer} xl list failed: ${r.stderr.trim()})`;
    return parseXlList(r.stdout);
  }

  async switchover(spec: InstanceSpec): Promise<MemoryResult> {
    const rec = await readState<MigrationRecord>(this.ex, this.migrationFile(spec));
    if (!rec) throw new FerryError(ErrorTypes.MemoryMigrationFailed, `cannot switch ${spec.id} over: xl migrate has not completed from this host`);
    // The handover already happened inside `xl migrate -p`; the guest's downtime is measured by
    // the workflow (pause to resume), xl does not report it.
    return { totalMs: rec.totalMs, transferredBytes: spec.memoryMiB * 1024 * 1024, ...(rec.settled ? { note: rec.settled } : {}) };
  }

  async cancelMigration(spec: InstanceSpec): Promise<void> {
    if (await readState<MigrationRecord>(this.ex, this.migrationFile(spec))) {
      throw new FerryError(
        ErrorTypes.DriverError,
        `${spec.id} was already handed over by xl migrate (it waits, paused, on the destination); it cannot be resumed here. Finish the final sync and resume it there.`,
      );
    }
    const st = await this.state(spec);
    if (st === 'paused') await runOk(this.ex, 'xl', ['unpause', spec.id]);
    else if (st !== 'running') throw new FerryError(ErrorTypes.InstanceNotRunning, `source ${spec.id} is ${st}: nothing to resume`);
  }

  async retire(spec: InstanceSpec, opts: { keepDisks?: boolean } = {}): Promise<void> {
    if ((await this.state(spec)) === 'running') throw new FerryError(ErrorTypes.DriverError, `refusing to retire ${spec.id}: it is still running on this host`);
    for (const name of [`${spec.id}--migratedaway`, spec.id]) {
      if (await this.domain(name)) await runOk(this.ex, 'xl', ['destroy', name]);
    }
    // Tracking first: an LV gets its own table back before it is removed or renamed.
    await this.stopDirtyTracking(spec);
    for (const d of spec.disks) {
      if (opts.keepDisks) await renameAside(this.ex, d);
      else await removeDisk(this.ex, d);
    }
    await runOk(this.ex, 'rm', ['-rf', '--', this.dir(spec)]);
  }
}

function describe(v: XlDomain[] | string): string {
  if (typeof v === 'string') return v;
  return v.length ? v.map((d) => `${d.name} (${d.state})`).join(', ') : 'none';
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function createXenDriver(opts: XenDriverOptions): XenDriver {
  return new XenDriver(opts);
}
