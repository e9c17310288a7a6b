// Guest disks on a Xen host's storage: where a guest's disk goes on the destination (an LV of the
// same name and size in the node's volume group, a file at the same or a mapped path), the checks
// before anything is created, creating, removing and opening them.
import { mapPath } from '../path-map.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { DiskSpec } from '../../shared/instance.js';
import { runOk, type Executor, type HostFile } from './executor.js';

export interface XenStorageOptions {
  /** Volume group for incoming LV disks; default: the same name as on the source. */
  volumeGroup?: string;
  /** Prefix rewrites for incoming file disks (first match wins); default: the same path. */
  pathMap?: { from: string; to: string }[];
}

/** `/dev/VG/LV` (what xl configs and `lvs` use). LVM names: letters, digits and `+_.-`. */
const LV_PATH = /^\/dev\/([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)\/([A-Za-z0-9+_.][A-Za-z0-9+_.-]*)$/;

export function lvPathParts(path: string): { vg: string; lv: string } {
  const m = LV_PATH.exec(path);
  if (!m) throw new FerryError(ErrorTypes.BadInput, `${path} is not of the form /dev/VG/LV`);
  return { vg: m[1]!, lv: m[2]! };
}

/** The disk as it will be on a destination with these storage settings. */
export function destinationDisk(disk: DiskSpec, opts: XenStorageOptions): DiskSpec {
  if (disk.kind === 'lv') {
    const { vg, lv } = lvPathParts(disk.path);
    return { ...disk, path: `/dev/${opts.volumeGroup ?? vg}/${lv}` };
  }
  return { ...disk, path: mapPath(disk.path, opts.pathMap) };
}

const dirOf = (path: string) => path.slice(0, path.lastIndexOf('/')) || '/';
const exists = async (ex: Executor, path: string) => (await ex.run('test', ['-e', path])).code === 0;

/** Room for every disk where it will live, and nothing already in the way. Throws a FerryError. */
export async function checkRoom(ex: Executor, disks: DiskSpec[]): Promise<void> {
  const byVg = new Map<string, DiskSpec[]>();
  const byDir = new Map<string, DiskSpec[]>();
  for (const d of disks) {
    if (d.kind === 'lv') byVg.set(lvPathParts(d.path).vg, [...(byVg.get(lvPathParts(d.path).vg) ?? []), d]);
    else byDir.set(dirOf(d.path), [...(byDir.get(dirOf(d.path)) ?? []), d]);
    if (await exists(ex, d.path)) {
      throw new FerryError(ErrorTypes.InvalidDestination, `${d.path} (for ${d.vdev}) already exists on ${ex.where}: remove it, or map the disk elsewhere (node.xen.${d.kind === 'lv' ? 'volumeGroup' : 'pathMap'})`);
    }
  }
  for (const [vg, ds] of byVg) {
    const r = await ex.run('vgs', ['--noheadings', '--nosuffix', '--units', 'b', '--separator', '|', '-o', 'vg_free,vg_extent_size', '--', vg]);
    if (r.code !== 0) throw new FerryError(ErrorTypes.InvalidDestination, `volume group ${vg} does not exist on ${ex.where} (set node.xen.volumeGroup to the one LV disks should go to): ${r.stderr.trim()}`);
    const [free, extent] = r.stdout.trim().split('|').map((x) => Number(x.trim()));
    const need = ds.reduce((n, d) => n + d.bytes, 0);
    if (!(free! >= need)) throw new FerryError(ErrorTypes.DestinationDiskFull, `volume group ${vg} on ${ex.where} has ${free} bytes free, the LV disks need ${need}`);
    for (const d of ds) {
      // An LV is a whole number of extents: a different size would change the guest's disk.
      if (d.bytes % extent! !== 0) throw new FerryError(ErrorTypes.InvalidDestination, `${d.vdev} is ${d.bytes} bytes, not a multiple of ${vg}'s extent size ${extent} on ${ex.where}: the LV would differ in size`);
    }
  }
  for (const [dir, ds] of byDir) {
    await runOk(ex, 'mkdir', ['-p', dir]);
    const out = await runOk(ex, 'df', ['-B1', '--output=avail', dir]);
    const free = Number(out.trim().split('\n').pop()?.trim());
    const need = ds.reduce((n, d) => n + d.bytes, 0);
    if (!Number.isFinite(free)) throw new FerryError(ErrorTypes.DriverError, `cannot read free space of ${dir} on ${ex.where}: ${out.trim()}`);
    if (free < need) throw new FerryError(ErrorTypes.DestinationDiskFull, `${dir} on ${ex.where} has ${free} bytes free, the file disks need ${need}`);
  }
}

/** Creates the disk (LV, or sparse file) unless it exists with this size. */
export async function createDisk(ex: Executor, d: DiskSpec): Promise<void> {
  if (await exists(ex, d.path)) {
    const size = await diskSize(ex, d);
    if (size !== d.bytes) throw new FerryError(ErrorTypes.InvalidDestination, `${d.path} on ${ex.where} is ${size} bytes, expected ${d.bytes}`);
    return;
  }
  if (d.kind === 'lv') {
    const { vg, lv } = lvPathParts(d.path);
    // No wiping or zeroing: every block is written by the copy (zero chunks too, see receiver).
    await runOk(ex, 'lvcreate', ['--yes', '--wipesignatures', 'n', '--zero', 'n', '--name', lv, '--size', `${d.bytes}b`, '--', vg]);
  } else {
    await runOk(ex, 'mkdir', ['-p', dirOf(d.path)]);
    await runOk(ex, 'truncate', ['-s', String(d.bytes), '--', d.path]);
  }
}

export async function removeDisk(ex: Executor, d: DiskSpec): Promise<void> {
  if (!(await exists(ex, d.path))) return;
  if (d.kind === 'lv') {
    const { vg, lv } = lvPathParts(d.path);
    // A domain just destroyed may hold the LV a moment longer.
    for (let i = 0; ; i++) {
      const r = await ex.run('lvremove', ['--yes', '--', `${vg}/${lv}`]);
      if (r.code === 0) return;
      if (i >= 10) throw new FerryError(ErrorTypes.DriverError, `lvremove ${vg}/${lv} failed on ${ex.where}: ${r.stderr.trim()}`);
      await new Promise((res) => setTimeout(res, 500));
    }
  }
  await runOk(ex, 'rm', ['-f', '--', d.path]);
}

/** `--keep-source`: the disk stays, renamed `<name>.ferry-migrated`. Idempotent. */
export async function renameAside(ex: Executor, d: DiskSpec): Promise<string> {
  if (d.kind === 'lv') {
    const { vg, lv } = lvPathParts(d.path);
    const aside = `/dev/${vg}/${lv}.ferry-migrated`;
    if (await exists(ex, d.path)) await runOk(ex, 'lvrename', ['--', vg, lv, `${lv}.ferry-migrated`]);
    return aside;
  }
  const aside = `${d.path}.ferry-migrated`;
  if (await exists(ex, d.path)) await runOk(ex, 'mv', ['-f', '--', d.path, aside]);
  return aside;
}

export async function diskSize(ex: Executor, d: Pick<DiskSpec, 'kind' | 'path'>): Promise<number> {
  const out = d.kind === 'lv' ? await runOk(ex, 'blockdev', ['--getsize64', d.path]) : await runOk(ex, 'stat', ['-L', '-c', '%s', '--', d.path]);
  const n = Number(out.trim());
  if (!Number.isSafeInteger(n)) throw new FerryError(ErrorTypes.DriverError, `cannot read the size of ${d.path} on ${ex.where}: ${out.trim()}`);
  return n;
}

/**
 * Opens a disk on the host at `path` for positioned I/O. A block device's page cache does not see
 * blkback's writes (they go to the device beneath it), so it is dropped first: every read after
 * this is fresh from the device, and blocks written later come again in the next dirty round,
 * which opens the disk anew. An LV's size is what it holds, not what `stat` says of a device (0).
 */
export async function openHostDisk(ex: Executor, path: string, kind: DiskSpec['kind'], bytes: number, mode: 'r' | 'r+'): Promise<HostFile> {
  const blockDevice = kind === 'lv' || path.startsWith('/dev/');
  if (blockDevice) await runOk(ex, 'blockdev', ['--flushbufs', path]);
  const f = await ex.openFile(path, mode);
  if (!blockDevice) return f;
  return {
    ...f,
    size: async () => bytes,
    truncate: async (n) => {
      if (n !== bytes) throw new FerryError(ErrorTypes.BadInput, `${path} is a ${bytes}-byte block device; it cannot become ${n} bytes`);
    },
  };
}
