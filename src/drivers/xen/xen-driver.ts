// The `xen` hypervisor driver: `xl` and `dmsetup` on a Xen host's dom0, through an Executor (local
// when the worker runs in dom0, SSH otherwise). All state lives on the host, under
// `<stateDir>/<id>/` (domain config, tracking era, frozen rounds, migration result), so a restarted
// worker finds everything again. See docs/xen.md.
//
// Where the final disk sync happens for Xen: `xl` has no pre-switchover pause like QEMU. `xl
// migrate -p` returns once the destination holds the whole domain, PAUSED, and the source domain
// has been suspended and destroyed. So `migrateMemory` resolves at that point; the workflow's
// final sync then reads the source disk (era device still present, nothing writes it any more)
// into the destination's disk; `switchover` only reports the memory result; `resume` unpauses the
// destination. The real point of no return is therefore the end of `migrateMemory`.
import type { HypervisorDriver, InstanceSpec, MemoryProgress, MemoryResult, RuntimeState } from '../driver.js';
import type { BlockSource } from '../../dataplane/types.js';
import type { Extent } from '../../shared/extents.js';
import { ID_PATTERN } from '../../shared/names.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { runOk, shellQuote, type Executor } from './executor.js';
import type { DiskTarget } from '../../dataplane/types.js';
import { dmExists, dmName, dmPath, ensureEraDevice, removeEraDevice, checkpoint, writtenSince } from './era-tracking.js';

export interface XenDriverOptions {
  /** Runs commands on this Xen host's dom0. */
  executor: Executor;
  /** Directory ON THE HOST for per-instance state. */
  stateDir: string;
  /** Directory on the host for destination disks; default `<stateDir>/disks`. */
  diskDir?: string;
  /** Bridge for the guest's vif; default xenbr0. */
  bridge?: string;
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
    if (f.length < 6 || !/^\d+$/.test(f[1])) continue;
    rows.push({ name: f[0], id: Number(f[1]), state: f[4] });
  }
  return rows;
}

function stateOf(flags: string): RuntimeState {
  if (/[scd]/.test(flags)) return 'stopped';
  if (flags.includes('p')) return 'paused';
  return 'running';
}

/** Values go into xl's config language inside double quotes: refuse what could break out. */
function cfgString(what: string, v: string): string {
  if (/["\\\n\r\0]/.test(v)) throw new FerryError(ErrorTypes.BadInput, `${what} ${JSON.stringify(v)} contains a quote, backslash or line break`);
  return `"${v}"`;
}

export class XenDriver implements HypervisorDriver {
  readonly kind = 'xen' as const;
  private readonly ex: Executor;
  readonly stateDir: string;
  readonly diskDir: string;
  private readonly pollMs: number;

  constructor(private readonly opts: XenDriverOptions) {
    this.ex = opts.executor;
    if (!opts.stateDir.startsWith('/')) throw new FerryError(ErrorTypes.BadInput, `xen stateDir must be absolute on the host, got ${opts.stateDir}`);
    this.stateDir = opts.stateDir.replace(/\/+$/, '');
    this.diskDir = (opts.diskDir ?? `${this.stateDir}/disks`).replace(/\/+$/, '');
    this.pollMs = opts.pollMs ?? 500;
  }

  private dir(spec: InstanceSpec): string {
    if (!ID_PATTERN.test(spec.id)) throw new FerryError(ErrorTypes.BadInput, `bad instance id ${JSON.stringify(spec.id)}`);
    return `${this.stateDir}/${spec.id}`;
  }
  private metaFile(spec: InstanceSpec, disk: string): string {
    return `${disk}.era-meta`;
  }

  private checkSpec(spec: InstanceSpec): void {
    if (spec.hypervisor !== 'xen') {
      throw new FerryError(ErrorTypes.HypervisorMismatch, `instance ${spec.id} is a ${spec.hypervisor} guest; this node runs Xen`);
    }
    if (!Number.isSafeInteger(spec.diskBytes) || spec.diskBytes <= 0 || spec.diskBytes % 512 !== 0) {
      throw new FerryError(ErrorTypes.BadInput, `disk size ${spec.diskBytes} must be a positive multiple of 512`);
    }
    if (!spec.diskPath.startsWith('/') || /[\0\n]/.test(spec.diskPath)) throw new FerryError(ErrorTypes.BadInput, `disk path ${JSON.stringify(spec.diskPath)} must be absolute`);
    this.dir(spec);
  }

  private async list(): Promise<XlDomain[]> {
    return parseXlList(await runOk(this.ex, 'xl', ['list']));
  }

  private async domain(name: string): Promise<XlDomain | undefined> {
    return (await this.list()).find((d) => d.name === name);
  }

  private async readJson<T>(path: string): Promise<T | null> {
    const r = await this.ex.run('cat', [path]);
    if (r.code !== 0) return null;
    return JSON.parse(r.stdout) as T;
  }

  private async writeJson(path: string, value: unknown): Promise<void> {
    // Written then renamed: a crash never leaves half a state file.
    await this.ex.writeFile(`${path}.tmp`, JSON.stringify(value));
    await runOk(this.ex, 'mv', ['-f', `${path}.tmp`, path]);
  }

  async state(spec: InstanceSpec): Promise<RuntimeState> {
    this.dir(spec);
    const all = await this.list();
    const d = all.find((x) => x.name === spec.id);
    if (d) return stateOf(d.state);
    if (all.some((x) => x.name === `${spec.id}--incoming`)) return 'incoming';
    return 'absent';
  }

  /** The domain's config for xl: the disk is always the era device. */
  private domainConfig(spec: InstanceSpec): string {
    const type = spec.guestType ?? 'pvh';
    if (!spec.boot?.kernel) throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} has no boot kernel (xen needs kernel= for ${type})`);
    if (type === 'hvm') throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id}: hvm guests are not supported by this driver yet (use pvh or pv)`);
    if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 64) throw new FerryError(ErrorTypes.BadInput, `memory ${spec.memoryMiB} MiB too small`);
    if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) throw new FerryError(ErrorTypes.BadInput, `vcpus ${spec.vcpus} invalid`);
    const bridge = this.opts.bridge ?? 'xenbr0';
    const lines = [
      `name = ${cfgString('name', spec.id)}`,
      `type = ${cfgString('type', type)}`,
      `memory = ${spec.memoryMiB}`,
      `vcpus = ${spec.vcpus}`,
      `kernel = ${cfgString('kernel', spec.boot.kernel)}`,
      spec.boot.initrd ? `ramdisk = ${cfgString('initrd', spec.boot.initrd)}` : '',
      spec.boot.append ? `cmdline = ${cfgString('append', spec.boot.append)}` : '',
      `disk = [ ${cfgString('disk', `phy:${dmPath(spec.id)},xvda,w`)} ]`,
      `vif = [ ${cfgString('vif', `bridge=${bridge}`)} ]`,
      'on_crash = "preserve"',
    ];
    return lines.filter(Boolean).join('\n') + '\n';
  }

  private async ensureDisk(path: string, bytes: number): Promise<void> {
    const r = await this.ex.run('stat', ['-c', '%s', path]);
    if (r.code === 0) {
      const size = Number(r.stdout.trim());
      if (size !== bytes) throw new FerryError(ErrorTypes.BadInput, `disk ${path} is ${size} bytes, expected ${bytes}`);
      return;
    }
    await runOk(this.ex, 'mkdir', ['-p', path.slice(0, path.lastIndexOf('/')) || '/']);
    await runOk(this.ex, 'truncate', ['-s', String(bytes), path]);
  }

  async start(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    if ((await this.state(spec)) !== 'absent') return;
    const cfg = this.domainConfig(spec);
    await this.ensureDisk(spec.diskPath, spec.diskBytes);
    await runOk(this.ex, 'mkdir', ['-p', this.dir(spec)]);
    await ensureEraDevice(this.ex, spec.id, spec.diskPath, this.metaFile(spec, spec.diskPath));
    const cfgPath = `${this.dir(spec)}/domain.cfg`;
    await this.ex.writeFile(cfgPath, cfg);
    await runOk(this.ex, 'xl', ['create', cfgPath]);
  }

  /** The guest type Xen actually runs (from `xl list -l`), else the spec's. */
  private async liveGuestType(spec: InstanceSpec): Promise<string> {
    const r = await this.ex.run('xl', ['list', '-l', spec.id]);
    if (r.code === 0) {
      try {
        const parsed = JSON.parse(r.stdout) as Array<{ config?: { c_info?: { type?: string } } }>;
        const t = parsed[0]?.config?.c_info?.type;
        if (t) return t;
      } catch {
        // fall through to the spec
      }
    }
    return spec.guestType ?? 'pvh';
  }

  async checkMigratable(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const info = await runOk(this.ex, 'xl', ['info']);
    const caps = /^virt_caps\s*:\s*(.*)$/m.exec(info)?.[1]?.trim() ?? '';
    const xenCaps = /^xen_caps\s*:\s*(.*)$/m.exec(info)?.[1]?.trim() ?? '';
    const type = await this.liveGuestType(spec);
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
  }

  // --- destination side ---

  destinationDiskPath(spec: InstanceSpec): string {
    this.dir(spec);
    return `${this.diskDir}/${spec.id}.raw`;
  }

  async destinationFreeBytes(spec: InstanceSpec): Promise<number> {
    const dir = this.destinationDiskPath(spec).replace(/\/[^/]+$/, '');
    await runOk(this.ex, 'mkdir', ['-p', dir]);
    const out = await runOk(this.ex, 'df', ['-B1', '--output=avail', dir]);
    const free = Number(out.trim().split('\n').pop()?.trim());
    if (!Number.isFinite(free)) throw new FerryError(ErrorTypes.DriverError, `cannot read free space of ${dir} on ${this.ex.where}: ${out.trim()}`);
    return free;
  }

  /** The receiver writes the destination's disk file on the host (through SFTP when remote). */
  openDestinationDisk(spec: InstanceSpec): Promise<DiskTarget> {
    return this.ex.openFile(this.destinationDiskPath(spec), 'r+');
  }

  async prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }> {
    this.checkSpec(spec);
    const listenHost = this.opts.migrationAddress ?? opts.listenHost;
    if (!HOST_RE.test(listenHost)) throw new FerryError(ErrorTypes.BadInput, `bad listen host ${JSON.stringify(listenHost)}`);
    const st = await this.state(spec);
    if (st === 'running') throw new FerryError(ErrorTypes.InvalidDestination, `${spec.id} already runs on this host`);
    const disk = this.destinationDiskPath(spec);
    await this.ensureDisk(disk, spec.diskBytes);
    await runOk(this.ex, 'mkdir', ['-p', this.dir(spec)]);
    // xl migrate sends the domain's config; its disk line names /dev/mapper/ferry-<id>, which
    // must exist here before the domain arrives.
    await ensureEraDevice(this.ex, spec.id, disk, this.metaFile(spec, disk));
    // xl migrate-receive is started by the source over ssh: nothing listens until then.
    return { memoryUri: `${MEMORY_URI_PREFIX}${listenHost}` };
  }

  async resume(spec: InstanceSpec): Promise<void> {
    const deadline = Date.now() + 300_000;
    for (;;) {
      const st = await this.state(spec);
      if (st === 'running') return;
      if (st === 'paused') {
        await runOk(this.ex, 'xl', ['unpause', spec.id]);
        return;
      }
      if (st === 'absent' || st === 'stopped') {
        throw new FerryError(ErrorTypes.MemoryMigrationFailed, `cannot resume ${spec.id} on this host: it is ${st}`);
      }
      if (Date.now() > deadline) throw new FerryError(ErrorTypes.MemoryMigrationFailed, `${spec.id} still incoming after 300 s`);
      await sleep(this.pollMs);
    }
  }

  async abortDestination(spec: InstanceSpec): Promise<void> {
    // xl's receiver renames `<id>--incoming` to `<id>` only once the sender gave it the guest: a
    // domain under the instance's own name here IS the guest (prepareDestination never creates
    // one, checkDestination refuses a host that has one). Never destroy it.
    const st = await this.state(spec);
    if (st !== 'absent' && st !== 'incoming') {
      throw new FerryError(ErrorTypes.DriverError, `refusing to remove ${spec.id} from ${this.ex.where}: xl already handed the guest over to this host (${st}); finish the migration instead`);
    }
    if (await this.domain(`${spec.id}--incoming`)) await this.ex.run('xl', ['destroy', `${spec.id}--incoming`]);
    const disk = this.destinationDiskPath(spec);
    await removeEraDevice(this.ex, spec.id, disk, this.metaFile(spec, disk));
    await runOk(this.ex, 'rm', ['-rf', '--', disk, this.metaFile(spec, disk), this.dir(spec)]);
  }

  // --- source side ---

  private trackingFile(spec: InstanceSpec) {
    return `${this.dir(spec)}/tracking.json`;
  }

  private async requireDevice(spec: InstanceSpec): Promise<void> {
    if (!(await dmExists(this.ex, spec.id))) {
      throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} has no era device ${dmPath(spec.id)} on ${this.ex.where}: it was not started by Ferry`);
    }
  }

  async startDirtyTracking(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    await this.requireDevice(spec);
    if (await this.readJson(this.trackingFile(spec))) return;
    // Everything written from the era opened by this checkpoint on belongs to round 1.
    const since = await checkpoint(this.ex, spec.id);
    await runOk(this.ex, 'mkdir', ['-p', `${this.dir(spec)}/rounds`]);
    await this.writeJson(this.trackingFile(spec), { since });
  }

  async takeDirtyRound(spec: InstanceSpec, round: number): Promise<Extent[]> {
    if (!Number.isInteger(round) || round < 1) throw new FerryError(ErrorTypes.BadInput, `bad round ${round}`);
    await this.requireDevice(spec);
    const roundFile = `${this.dir(spec)}/rounds/${round}.json`;
    const done = await this.readJson<Extent[]>(roundFile);
    if (done) return done;
    const tracking = await this.readJson<{ since: number }>(this.trackingFile(spec));
    if (!tracking) throw new FerryError(ErrorTypes.DriverError, `dirty tracking of ${spec.id} is not started`);
    const { extents, next } = await writtenSince(this.ex, spec.id, this.metaFile(spec, spec.diskPath), tracking.since, spec.diskBytes);
    // Round file first: a crash between the two writes re-lists a superset next round, never less.
    await this.writeJson(roundFile, extents);
    await this.writeJson(this.trackingFile(spec), { since: next });
    return extents;
  }

  /**
   * Reads the disk's backing file, not the dm device: blkback writes reach the file through the
   * loop device's page cache, so file reads see them; reads of /dev/mapper/... would go through
   * the block device's own cache, which blkback's bios bypass (stale data on re-reads).
   */
  async openDisk(spec: InstanceSpec): Promise<BlockSource> {
    this.checkSpec(spec);
    const f = await this.ex.openFile(spec.diskPath, 'r');
    const size = spec.diskBytes;
    return {
      size,
      read: (offset, length) => f.read(offset, Math.min(length, size - offset)),
      close: () => f.close(),
    };
  }

  /** sha256sum on the host: reading the disk through SFTP would cost far more than hashing it there. */
  async digestDisk(spec: InstanceSpec, side: 'source' | 'destination'): Promise<string> {
    this.checkSpec(spec);
    const path = side === 'source' ? spec.diskPath : this.destinationDiskPath(spec);
    const out = await runOk(this.ex, 'sha256sum', ['--', path], { timeoutMs: 30 * 60_000 });
    const hex = /^([0-9a-f]{64})\s/.exec(out)?.[1];
    if (!hex) throw new FerryError(ErrorTypes.DriverError, `unexpected sha256sum output on ${this.ex.where}: ${out.trim()}`);
    return hex;
  }

  async stopDirtyTracking(spec: InstanceSpec): Promise<void> {
    await runOk(this.ex, 'rm', ['-rf', '--', this.trackingFile(spec), `${this.dir(spec)}/rounds`]);
  }

  private migrationFile(spec: InstanceSpec) {
    return `${this.dir(spec)}/migration.json`;
  }

  async migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: { downtimeMs: number; bandwidthBytesPerSec?: number; onProgress?: (p: MemoryProgress) => void },
  ): Promise<void> {
    if (!memoryUri.startsWith(MEMORY_URI_PREFIX) || !HOST_RE.test(memoryUri.slice(MEMORY_URI_PREFIX.length))) {
      throw new FerryError(ErrorTypes.BadInput, `bad Xen memory URI ${JSON.stringify(memoryUri)} (expected ${MEMORY_URI_PREFIX}HOST)`);
    }
    const peer = memoryUri.slice(MEMORY_URI_PREFIX.length);
    // A retry after the handover: the domain is already on the peer.
    if (await this.readJson<MigrationRecord>(this.migrationFile(spec))) return;
    const st = await this.state(spec);
    if (st === 'absent') {
      // A retry after a worker died between xl's success and our record: trust only what the
      // peer shows (the domain there under its own name), never assume.
      const there = await this.peerList(peer);
      if (typeof there !== 'string' && there.some((d) => d.name === spec.id)) {
        await this.writeJson(this.migrationFile(spec), { totalMs: 0, peer } satisfies MigrationRecord);
        return;
      }
      throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is not on this host, and ${peer} shows ${describe(there)}: nothing to migrate`);
    }
    if (st !== 'running' && st !== 'paused') throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is ${st} here: nothing to migrate`);
    // xl would hand the guest over even if the destination's block device vanished since
    // prepareDestination (measured: the domain arrives without a working disk). Check first.
    const dev = await this.onPeer(peer, ['dmsetup', 'info', dmName(spec.id)]);
    if (dev.code !== 0) {
      throw new FerryError(ErrorTypes.MigrationRefused, `${peer} has no ${dmPath(spec.id)} for ${spec.id} (prepareDestination made one; something removed it): not starting xl migrate. ${dev.stderr.trim()}`);
    }
    opts.onProgress?.({ status: 'xl-migrate', transferredBytes: 0, remainingBytes: spec.memoryMiB * 1024 * 1024, totalBytes: spec.memoryMiB * 1024 * 1024 });
    const t0 = Date.now();
    // -p: the destination stays paused, so the final disk sync can happen before it runs.
    // xl has no bandwidth or downtime knob; the options are accepted and not applied (docs/xen.md).
    const transport = this.opts.migrateSshCommand?.length ? ['-s', this.opts.migrateSshCommand.map(shellQuote).join(' ')] : [];
    const r = await this.ex.run('xl', ['migrate', ...transport, '-p', spec.id, peer], { timeoutMs: this.opts.migrateTimeoutMs ?? 30 * 60_000 });
    const totalMs = Date.now() - t0;
    const tail = (r.stderr || r.stdout).trim().split('\n').slice(-8).join('\n');
    if (r.code === 0) {
      await this.writeJson(this.migrationFile(spec), { totalMs, peer } satisfies MigrationRecord);
      opts.onProgress?.({ status: 'completed', transferredBytes: spec.memoryMiB * 1024 * 1024, remainingBytes: 0, totalBytes: spec.memoryMiB * 1024 * 1024 });
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
      await this.writeJson(this.migrationFile(spec), { totalMs, peer, settled } satisfies MigrationRecord);
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
    return this.ex.run('ssh', ['-o', 'BatchMode=yes', '-o', 'ConnectTimeout=10', '--', peer, ...cmd]);
  }

  /** `xl list` on the peer. */
  private async peerList(peer: string): Promise<XlDomain[] | string> {
    const r = await this.onPeer(peer, ['xl', 'list']);
    if (r.code !== 0) return `unknown (ssh ${peer} xl list failed: ${r.stderr.trim()})`;
    return parseXlList(r.stdout);
  }

  async switchover(spec: InstanceSpec): Promise<MemoryResult> {
    const rec = await this.readJson<MigrationRecord>(this.migrationFile(spec));
    if (!rec) throw new FerryError(ErrorTypes.MemoryMigrationFailed, `cannot switch ${spec.id} over: xl migrate has not completed from this host`);
    // The handover already happened inside `xl migrate -p`; the guest's downtime is measured by
    // the workflow (pause to resume), xl does not report it.
    return { totalMs: rec.totalMs, transferredBytes: spec.memoryMiB * 1024 * 1024, ...(rec.settled ? { note: rec.settled } : {}) };
  }

  async cancelMigration(spec: InstanceSpec): Promise<void> {
    if (await this.readJson<MigrationRecord>(this.migrationFile(spec))) {
      throw new FerryError(
        ErrorTypes.DriverError,
        `${spec.id} was already handed over by xl migrate (it waits, paused, on the destination); it cannot be resumed here. Finish the final sync and resume it there.`,
      );
    }
    const st = await this.state(spec);
    if (st === 'paused') await runOk(this.ex, 'xl', ['unpause', spec.id]);
    else if (st !== 'running') throw new FerryError(ErrorTypes.InstanceNotRunning, `source ${spec.id} is ${st}: nothing to resume`);
  }

  async retire(spec: InstanceSpec): Promise<void> {
    if ((await this.state(spec)) === 'running') throw new FerryError(ErrorTypes.DriverError, `refusing to retire ${spec.id}: it is still running on this host`);
    for (const name of [`${spec.id}--migratedaway`, spec.id]) {
      if (await this.domain(name)) await runOk(this.ex, 'xl', ['destroy', name]);
    }
    await removeEraDevice(this.ex, spec.id, spec.diskPath, this.metaFile(spec, spec.diskPath));
    await runOk(this.ex, 'rm', ['-rf', '--', spec.diskPath, this.metaFile(spec, spec.diskPath), this.dir(spec)]);
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
