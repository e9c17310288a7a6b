// The `libvirt` hypervisor driver: QEMU/KVM domains that libvirtd runs, defined by the operator
// (`virsh define`), never started by Ferry. Disks move through Ferry's data plane: writes are
// tracked with QMP dirty bitmaps through libvirt (qemu-monitor-command) and read through an NBD
// export of the running QEMU, so raw and qcow2 disks both read as the guest sees them; memory
// moves by libvirt's own migration (memory-handover.ts). See docs/libvirt.md.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Discovery, HypervisorDriver, MemoryProgress, MemoryResult, RuntimeState } from '../driver.js';
import type { DiskSpec, InstanceSpec } from '../../shared/instance.js';
import { diskOf } from '../../shared/instance.js';
import type { BlockSource, DiskTarget } from '../../dataplane/types.js';
import type { Extent } from '../../shared/extents.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { ID_PATTERN } from '../../shared/names.js';
import { NbdBlockSource } from '../qemu/nbd-client.js';
import { DEFAULT_GRANULARITY, ensureExport, removeExports, startTracking, stopTracking, takeRound, takenRound, type QmpExecutor, type TrackedDisk } from '../qemu/dirty-tracking.js';
import { exists } from '../file-exists.js';
import { mapPath, type PathRule } from '../path-map.js';
import { parseDomainXml, instanceSpecOf, withDiskPaths, type DomainXml } from './domain-xml.js';
import { Virsh, stillIncoming } from './virsh.js';
import { checkDestinationDisks, createDestinationDisks, openDestinationTarget, removeCreatedDisks, stopQemuNbd } from './destination-disks.js';
import { abortMigration, closeDestinationTunnel, encodeMemoryUri, migrateUntilPaused, migrationInFlight, openDestinationTunnel, releaseAndFinish, sourceStoppedItself } from './memory-handover.js';
import { openFileSource } from '../../dataplane/file-source.js';
import { serveImage } from '../qemu/qemu-nbd.js';

export interface LibvirtDriverOptions {
  /** Ferry's per-instance state on this host (tracking rounds, sockets, records of what it created). */
  stateDir: string;
  /** The local libvirtd's socket (modular daemons: /run/libvirt/virtqemud-sock). */
  socket?: string;
  virshBinary?: string;
  /** Where incoming disks go (prefix rewrites, first match wins); default: the path they have on the source. */
  pathMap?: PathRule[];
  log?: (line: string) => void;
}

export const DEFAULT_LIBVIRT_SOCKET = '/run/libvirt/libvirt-sock';
/** What `retire({ keepDisks: true })` appends to the source disks' names. */
export const MIGRATED_SUFFIX = '.ferry-migrated';

export class LibvirtDriver implements HypervisorDriver {
  readonly kind = 'libvirt' as const;
  // Ferry pauses the source itself and holds libvirt's stream until the final round is in.
  readonly handover = 'pause-before-switchover' as const;
  readonly virsh: Virsh;
  private readonly socket: string;
  private readonly stateDir: string;

  constructor(private readonly opts: LibvirtDriverOptions) {
    this.socket = opts.socket ?? DEFAULT_LIBVIRT_SOCKET;
    this.stateDir = resolve(opts.stateDir);
    this.virsh = new Virsh(`qemu:///system?socket=${this.socket}`, opts.virshBinary);
  }

  private dir(spec: Pick<InstanceSpec, 'id'>): string {
    if (!ID_PATTERN.test(spec.id)) throw new FerryError(ErrorTypes.BadInput, `bad instance id ${JSON.stringify(spec.id)}`);
    return join(this.stateDir, spec.id);
  }

  private checkSpec(spec: InstanceSpec): void {
    if (spec.hypervisor !== 'libvirt') throw new FerryError(ErrorTypes.HypervisorMismatch, `instance ${spec.id} is a ${spec.hypervisor} guest; this node runs libvirt`);
    if (!spec.disks?.length) throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} has no disk`);
    for (const d of spec.disks) {
      if (d.kind !== 'file') throw new FerryError(ErrorTypes.BadInput, `disk ${d.vdev} of ${spec.id} is a ${d.kind}: the libvirt driver moves image files`);
    }
    this.dir(spec);
  }

  async state(spec: InstanceSpec): Promise<RuntimeState> {
    const { state, reason } = await this.virsh.domstate(spec.id);
    switch (state) {
      case 'running':
      case 'blocked':
      case 'idle':
        return 'running';
      case 'paused':
        return stillIncoming(reason) ? 'incoming' : 'paused';
      case 'absent':
        return 'absent';
      default:
        return 'stopped';
    }
  }

  /** The domain's XML as libvirt has it now (live when it runs). */
  private async domainXml(name: string): Promise<DomainXml> {
    return parseDomainXml(await this.virsh.run(['dumpxml', '--domain', name]));
  }

  async discover(): Promise<Discovery> {
    const names = (await this.virsh.run(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
    const out: Discovery = { instances: [], refused: [] };
    for (const name of names) {
      const d = await this.domainXml(name);
      const { state } = await this.virsh.domstate(name);
      const why = d.refusal ?? (state === 'running' ? undefined : `it is ${state}: Ferry live-migrates running domains`);
      if (why) {
        out.refused.push({ name, reason: why });
        continue;
      }
      out.instances.push(instanceSpecOf(d, await this.diskSizes(d)));
    }
    return out;
  }

  /** Each disk's virtual size, as QEMU sees it. */
  private async diskSizes(d: DomainXml): Promise<Record<string, number>> {
    const sizes: Record<string, number> = {};
    for (const disk of d.disks) {
      const out = await this.virsh.run(['domblkinfo', '--domain', d.name, '--device', disk.vdev]);
      const m = /Capacity:\s+(\d+)/.exec(out);
      if (!m) throw new FerryError(ErrorTypes.DriverError, `virsh domblkinfo gave no capacity for ${d.name}/${disk.vdev}`);
      sizes[disk.vdev] = Number(m[1]);
    }
    return sizes;
  }

  // Called on both hosts: the domain's own checks apply where it runs (the source).
  async checkMigratable(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const { state } = await this.virsh.domstate(spec.id);
    if (state === 'absent') return;
    if (state !== 'running') throw new FerryError(ErrorTypes.InstanceNotRunning, `domain ${spec.id} is ${state} here; Ferry live-migrates running domains`);
    const d = await this.domainXml(spec.id);
    if (d.refusal) throw new FerryError(ErrorTypes.BadInput, `domain ${spec.id} cannot be moved: ${d.refusal}`);
    for (const disk of spec.disks) {
      const now = d.disks.find((x) => x.vdev === disk.vdev);
      if (!now || now.path !== disk.path || now.format !== disk.format) {
        throw new FerryError(ErrorTypes.BadInput, `domain ${spec.id}'s disk ${disk.vdev} is not what the inventory records (${disk.path}, ${disk.format}): run ferry node sync`);
      }
    }
    if (d.disks.length !== spec.disks.length) throw new FerryError(ErrorTypes.BadInput, `domain ${spec.id} has ${d.disks.length} disks, the inventory records ${spec.disks.length}: run ferry node sync`);
  }

  // --- destination side ---

  destinationDisks(spec: InstanceSpec): DiskSpec[] {
    this.checkSpec(spec);
    return spec.disks.map((d) => ({ ...d, path: mapPath(d.path, this.opts.pathMap) }));
  }

  async checkDestination(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const { state } = await this.virsh.domstate(spec.id);
    if (state !== 'absent') throw new FerryError(ErrorTypes.InvalidDestination, `a domain named ${spec.id} is already defined on this host (${state})`);
    for (const f of [spec.boot?.kernel, spec.boot?.initrd]) {
      if (f && !(await exists(f))) throw new FerryError(ErrorTypes.InvalidDestination, `boot file ${f} of ${spec.id} is missing on this host`);
    }
    for (const n of spec.nics ?? []) {
      if (n.bridge && !(await exists(`/sys/class/net/${n.bridge}/bridge`))) {
        throw new FerryError(ErrorTypes.InvalidDestination, `bridge ${n.bridge} of ${spec.id} does not exist on this host`);
      }
    }
    if (spec.extra?.domainType === 'kvm' && !(await exists('/dev/kvm'))) {
      throw new FerryError(ErrorTypes.InvalidDestination, `${spec.id} is a KVM domain and this host has no /dev/kvm`);
    }
    await checkDestinationDisks(this.dir(spec), this.destinationDisks(spec));
  }

  async prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }> {
    this.checkSpec(spec);
    await createDestinationDisks(this.dir(spec), this.destinationDisks(spec));
    const plan = await openDestinationTunnel(spec.id, { listenHost: opts.listenHost, libvirtSocket: this.socket, log: this.opts.log });
    return { memoryUri: encodeMemoryUri(plan) };
  }

  async openDestinationDisk(spec: InstanceSpec, vdev: string): Promise<DiskTarget> {
    this.checkSpec(spec);
    return openDestinationTarget(this.dir(spec), diskOf({ id: spec.id, disks: this.destinationDisks(spec) }, vdev));
  }

  async resume(spec: InstanceSpec): Promise<void> {
    // libvirt activates the disks (takes their write locks) at `cont`: qemu-nbd must let go first.
    // Every stream is done by now; a receiver still open finds its server gone, which it tolerates.
    await stopQemuNbd(this.dir(spec));
    const deadline = Date.now() + 300_000;
    for (;;) {
      const { state, reason } = await this.virsh.domstate(spec.id);
      if (state === 'running') break;
      if (state === 'paused' && !stillIncoming(reason)) {
        await this.virsh.run(['resume', '--domain', spec.id]);
        break;
      }
      if (Date.now() > deadline) throw new FerryError(ErrorTypes.MemoryMigrationFailed, `domain ${spec.id} is ${state} here after 300 s, not waiting to run`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await closeDestinationTunnel(spec.id);
    // The guest runs here now: the record of what Ferry created is no longer needed for a rollback.
    await rm(this.dir(spec), { recursive: true, force: true });
  }

  async abortDestination(spec: InstanceSpec): Promise<void> {
    const { state, reason } = await this.virsh.domstate(spec.id);
    if (state === 'running') throw new FerryError(ErrorTypes.DriverError, `refusing to abort ${spec.id} here: it already runs on this node`);
    // Paused but not incoming: libvirt finished the migration, so the source QEMU is gone and this
    // is the guest's only live copy. Never destroy that; the operator decides.
    if (state === 'paused' && !stillIncoming(reason)) {
      throw new FerryError(ErrorTypes.DriverError, `refusing to abort ${spec.id} here: libvirt finished migrating it, it waits paused on this node (${reason || 'paused'}) and the source no longer runs it`);
    }
    await closeDestinationTunnel(spec.id);
    // A failed libvirt migration removes its incoming domain itself; one still starting is Ferry's.
    if (state === 'paused') await this.virsh.run(['destroy', '--domain', spec.id]).catch(() => undefined);
    const dir = this.dir(spec);
    await removeCreatedDisks(dir);
    await rm(dir, { recursive: true, force: true });
  }

  // --- source side ---

  /**
   * The domain's disks as tracked QEMU block nodes, found by the device alias libvirt gave each.
   * Remembered in the instance's folder: the final round runs while the guest is paused, and two
   * virsh round trips fewer are time the guest does not wait (the nodes live as long as its QEMU).
   */
  private async tracked(spec: InstanceSpec, q: QmpExecutor): Promise<Record<string, TrackedDisk>> {
    const dir = this.dir(spec);
    const file = join(dir, 'block-nodes.json');
    const known = await readFile(file, 'utf8').then((s) => JSON.parse(s) as Record<string, string>, () => null);
    if (known && spec.disks.every((d) => typeof known[d.vdev] === 'string')) {
      return Object.fromEntries(spec.disks.map((d) => [d.vdev, this.trackedFiles(dir, d.vdev, known[d.vdev]!)]));
    }
    const xml = await this.domainXml(spec.id);
    const blocks = await q.execute<Array<{ qdev?: string; device?: string; inserted?: { 'node-name'?: string } }>>('query-block');
    const out: Record<string, TrackedDisk> = {};
    for (const disk of spec.disks) {
      const alias = xml.disks.find((d) => d.vdev === disk.vdev)?.alias;
      const block = alias ? blocks.find((b) => b.qdev?.split('/').includes(alias) || b.device === `drive-${alias}`) : undefined;
      const node = block?.inserted?.['node-name'];
      if (!node) throw new FerryError(ErrorTypes.DriverError, `cannot find QEMU's block node of ${spec.id}/${disk.vdev} (alias ${alias ?? 'none'})`);
      out[disk.vdev] = this.trackedFiles(dir, disk.vdev, node);
    }
    await mkdir(dir, { recursive: true });
    await writeFile(file, JSON.stringify(Object.fromEntries(Object.entries(out).map(([v, t]) => [v, t.node]))));
    return out;
  }

  private trackedFiles(dir: string, vdev: string, node: string): TrackedDisk {
    return { node, nbdSocket: join(dir, 'source.nbd'), stateFile: join(dir, `tracking-${vdev}.json`), roundsDir: join(dir, `rounds-${vdev}`), exportPrefix: `ferry-${vdev}-` };
  }

  private async requireRunning(spec: InstanceSpec): Promise<QmpExecutor> {
    this.checkSpec(spec);
    const { state } = await this.virsh.domstate(spec.id);
    if (state !== 'running' && state !== 'paused') throw new FerryError(ErrorTypes.InstanceNotRunning, `domain ${spec.id} is ${state} on this node`);
    return this.virsh.qmp(spec.id);
  }

  async startDirtyTracking(spec: InstanceSpec): Promise<void> {
    const q = await this.requireRunning(spec);
    // Found afresh for each migration: a QEMU restarted since an earlier attempt has new nodes.
    await rm(join(this.dir(spec), 'block-nodes.json'), { force: true });
    const g = typeof spec.extra?.dirtyGranularity === 'number' ? spec.extra.dirtyGranularity : DEFAULT_GRANULARITY;
    for (const t of Object.values(await this.tracked(spec, q))) await startTracking(q, t, g);
  }

  async takeDirtyRound(spec: InstanceSpec, round: number): Promise<Record<string, Extent[]>> {
    this.checkSpec(spec);
    // QEMU switched over by itself and inactivated the disks: no bitmap to ask, so every byte.
    if (sourceStoppedItself(spec.id)) return Object.fromEntries(spec.disks.map((d) => [d.vdev, [{ offset: 0, length: d.bytes }]]));
    const dir = this.dir(spec);
    const out: Record<string, Extent[]> = {};
    let disks: Record<string, TrackedDisk> | undefined;
    let q: QmpExecutor | undefined;
    for (const d of spec.disks) {
      const taken = await takenRound(this.trackedFiles(dir, d.vdev, ''), round);
      if (taken) {
        out[d.vdev] = taken;
        continue;
      }
      q ??= await this.requireRunning(spec);
      disks ??= await this.tracked(spec, q);
      out[d.vdev] = await takeRound(q, disks[d.vdev]!, round);
    }
    return out;
  }

  async openDisk(spec: InstanceSpec, vdev: string): Promise<BlockSource> {
    if (sourceStoppedItself(spec.id)) return this.openStoppedDisk(spec, diskOf(spec, vdev));
    const q = await this.requireRunning(spec);
    diskOf(spec, vdev);
    const t = (await this.tracked(spec, q))[vdev]!;
    const id = `${t.exportPrefix}live`;
    await ensureExport(q, t, id);
    return NbdBlockSource.open(t.nbdSocket, id);
  }

  /** A disk of a source QEMU that has inactivated it: the file itself (qcow2 through a read-only qemu-nbd). */
  private async openStoppedDisk(spec: InstanceSpec, d: DiskSpec): Promise<BlockSource> {
    if (d.format === 'raw') return openFileSource(d.path);
    // The stopped QEMU still holds the image's lock, but has flushed and inactivated it.
    const image = await serveImage({ path: d.path, format: 'qcow2', socketPath: join(this.dir(spec), `stopped-${d.vdev}.nbd`), writable: false, forceShare: true });
    const src = await NbdBlockSource.open(image.socketPath, image.exportName).catch(async (e: unknown) => {
      await image.stop();
      throw e;
    });
    return { size: src.size, read: (o, l) => src.read(o, l), zeroExtents: () => src.zeroExtents(), close: async () => { await src.close().catch(() => undefined); await image.stop(); } };
  }

  async stopDirtyTracking(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const dir = this.dir(spec);
    const { state } = await this.virsh.domstate(spec.id);
    if (state !== 'running' && state !== 'paused') {
      await rm(dir, { recursive: true, force: true });
      return;
    }
    const q = this.virsh.qmp(spec.id);
    for (const t of Object.values(await this.tracked(spec, q))) await stopTracking(q, t);
    await removeExports(q);
    await q.execute('nbd-server-stop').catch(() => undefined);
    // Only called to undo (a success ends in retire): nothing of Ferry stays on the host.
    await rm(dir, { recursive: true, force: true });
  }

  async migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: { downtimeMs: number; bandwidthBytesPerSec?: number; destinationDisks: DiskSpec[]; onProgress?: (p: MemoryProgress) => void },
  ): Promise<void> {
    await this.requireRunning(spec);
    // Disks that live elsewhere on the destination (its pathMap): the destination's XML says so.
    const moved: Record<string, string> = {};
    for (const d of opts.destinationDisks) if (diskOf(spec, d.vdev).path !== d.path) moved[d.vdev] = d.path;
    let xmlFile: string | undefined;
    if (Object.keys(moved).length > 0) {
      xmlFile = join(this.dir(spec), 'destination.xml');
      await mkdir(this.dir(spec), { recursive: true });
      await writeFile(xmlFile, withDiskPaths(await this.virsh.run(['dumpxml', '--migratable', '--domain', spec.id]), moved));
    }
    await migrateUntilPaused(this.virsh, spec.id, memoryUri, {
      xmlFile,
      dir: this.dir(spec),
      downtimeMs: opts.downtimeMs,
      bandwidthBytesPerSec: opts.bandwidthBytesPerSec,
      onProgress: opts.onProgress,
      log: this.opts.log,
    });
  }

  async switchover(spec: InstanceSpec): Promise<MemoryResult> {
    this.checkSpec(spec);
    // QEMU cannot inactivate a disk that an NBD export holds; the final sync is done by now.
    const t0 = Date.now();
    const q = this.virsh.qmp(spec.id);
    if (!sourceStoppedItself(spec.id)) {
      await removeExports(q);
      await q.execute('nbd-server-stop').catch(() => undefined);
    }
    const exportsMs = Date.now() - t0;
    const r = await releaseAndFinish(this.virsh, spec.id);
    return { ...r, note: `${r.note}; NBD exports closed in ${exportsMs} ms before it` };
  }

  async cancelMigration(spec: InstanceSpec): Promise<void> {
    this.checkSpec(spec);
    const before = await this.virsh.domstate(spec.id);
    if (before.state === 'absent' || before.state === 'shut off') {
      throw new FerryError(ErrorTypes.DriverError, `domain ${spec.id} is ${before.state} on this node: the migration already switched over, it cannot be cancelled`);
    }
    if (migrationInFlight(spec.id) || /migrat/.test(before.reason)) await abortMigration(this.virsh, spec.id);
    else await this.virsh.run(['domjobabort', '--domain', spec.id]).catch(() => undefined);
    const deadline = Date.now() + 60_000;
    for (;;) {
      const { state } = await this.virsh.domstate(spec.id);
      if (state === 'running') return;
      if (state === 'paused') {
        await this.virsh.run(['resume', '--domain', spec.id]).catch(async (e: unknown) => {
          // libvirt may still be unwinding the aborted job: try again below.
          if (Date.now() > deadline) throw e;
        });
      } else if (state === 'absent' || state === 'shut off') {
        throw new FerryError(ErrorTypes.DriverError, `domain ${spec.id} is ${state} after the cancel: the migration completed before it took effect`);
      }
      if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, `domain ${spec.id} does not resume after the cancel`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async retire(spec: InstanceSpec, opts: { keepDisks?: boolean } = {}): Promise<void> {
    this.checkSpec(spec);
    const { state } = await this.virsh.domstate(spec.id);
    if (state === 'running' || state === 'paused') throw new FerryError(ErrorTypes.DriverError, `refusing to retire ${spec.id}: it is ${state} on this node`);
    // keepDisks keeps the definition, shut off, and the disks renamed aside: it cannot start by accident.
    if (state !== 'absent' && !opts.keepDisks) await this.virsh.run(['undefine', '--domain', spec.id]);
    for (const d of spec.disks) {
      if (opts.keepDisks) await rename(d.path, `${d.path}${MIGRATED_SUFFIX}`).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      else await rm(d.path, { force: true });
    }
    await rm(this.dir(spec), { recursive: true, force: true });
  }
}

export function createLibvirtDriver(opts: LibvirtDriverOptions): LibvirtDriver {
  return new LibvirtDriver(opts);
}
