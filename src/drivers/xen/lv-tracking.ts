// Write tracking under a running guest's LVM logical volume: device-mapper `era` swapped in under
// the LV's own device, which blkback keeps open. The LV's table (linear segments over the PVs) is
// copied to a new device `ferry-<id>-<vdev>-base`; the LV's device is then reloaded as
// `era META base` and resumed (dm suspends it for the swap, flushing in-flight I/O: a pause of
// milliseconds the guest does not notice); removing it reloads the original table. The guest's
// device number never changes, so blkback and the guest see nothing.
//
// Only linear LVs: a snapshot origin, thin or RAID LV has a table whose targets hold state of
// their own that a second device over the same extents would bypass.
import { runOk, type Executor } from './executor.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { Extent } from '../../shared/extents.js';
import { ERA_BLOCK_SECTORS, ERA_META_BYTES, attachLoop, detachLoops, dmCreate, dmExists, dmLoadAndResume, dmRemove, dmTable, checkpoint, loopsOf, writtenSince } from './era-tracking.js';
import { readState, writeState, type DiskTracker, type TrackerContext } from './disk-tracker.js';

export interface LvInfo {
  vg: string;
  lv: string;
  bytes: number;
  /** lv_attr, e.g. `-wi-ao----` (first letter: volume type; `o` origin, `s` snapshot, `V` thin). */
  attr: string;
  /** The LV's device-mapper name, e.g. `guests-x1--root`. */
  dm: string;
}

/** What LVM says of `path`, or null when it is not a logical volume. */
export async function lvInfo(ex: Executor, path: string): Promise<LvInfo | null> {
  const r = await ex.run('lvs', ['--noheadings', '--nosuffix', '--units', 'b', '--separator', '|', '-o', 'vg_name,lv_name,lv_size,lv_attr,lv_dm_path', '--', path]);
  if (r.code !== 0) return null;
  const f = r.stdout.trim().split('|').map((x) => x.trim());
  if (f.length !== 5 || !/^\d+$/.test(f[2]!)) return null;
  return { vg: f[0]!, lv: f[1]!, bytes: Number(f[2]), attr: f[3]!, dm: f[4]!.replace(/^\/dev\/mapper\//, '') };
}

interface LvState {
  /** The LV's device-mapper name. */
  dm: string;
  /** The LV's table before Ferry touched it (restored on stop). */
  original: string;
  base: string;
  meta: string;
  since: number;
}

export function lvTracker(c: TrackerContext): DiskTracker {
  const stateFile = `${c.dir}/track-${c.disk.vdev}.json`;
  const base = `ferry-${c.id}-${c.disk.vdev}-base`;
  const meta = `${c.dir}/${c.disk.vdev}.era-meta`;
  const tableFile = (what: string) => `${c.dir}/${c.disk.vdev}.${what}.table`;

  async function info(): Promise<LvInfo> {
    const i = await lvInfo(c.ex, c.disk.path);
    if (!i) throw new FerryError(ErrorTypes.DriverError, `${c.disk.path} (${c.disk.vdev} of ${c.id}) is not a logical volume on ${c.ex.where}`);
    return i;
  }

  return {
    async refusal() {
      const i = await lvInfo(c.ex, c.disk.path);
      if (!i) return `${c.disk.path} is not an LVM logical volume that lvs knows`;
      if ((await readState(c.ex, stateFile)) !== null) return null; // ours, from an attempt that is still going
      const table = await dmTable(c.ex, i.dm);
      const targets = [...new Set(table.split('\n').map((l) => l.trim().split(/\s+/)[2]))];
      if (targets.length !== 1 || targets[0] !== 'linear') {
        const what = i.attr.startsWith('o') ? 'the origin of a snapshot' : i.attr.startsWith('V') ? 'a thin volume' : `mapped by ${targets.join(', ')}`;
        return `${c.disk.path} is ${what} (dm table target ${targets.join(', ')}): Ferry tracks writes only under linear LVs. Remove the snapshot (lvremove) or move the data to a linear LV, then migrate`;
      }
      if ((await c.ex.run('modprobe', ['dm-era'])).code !== 0 && !(await c.ex.run('dmsetup', ['targets'])).stdout.includes('era')) {
        return `this host has no device-mapper era target (modprobe dm-era failed)`;
      }
      return null;
    },

    async start() {
      const i = await info();
      let st = await readState<LvState>(c.ex, stateFile);
      if (!st) {
        const original = await dmTable(c.ex, i.dm);
        if (/\bera\b/.test(original)) throw new FerryError(ErrorTypes.DriverError, `${c.disk.path} already has an era table that Ferry did not put there: ${original}`);
        // The original table is on the host before anything changes, so a crash can always restore it.
        st = { dm: i.dm, original, base, meta, since: 0 };
        await runOk(c.ex, 'mkdir', ['-p', c.dir]);
        await writeState(c.ex, stateFile, st);
      }
      if (!/\bera\b/.test(await dmTable(c.ex, st.dm))) {
        await dmCreate(c.ex, base, st.original, tableFile('base'));
        // A fresh, zeroed metadata device: era formats it on first use.
        await detachLoops(c.ex, meta);
        await runOk(c.ex, 'rm', ['-f', meta]);
        await runOk(c.ex, 'truncate', ['-s', String(ERA_META_BYTES), meta]);
        const metaLoop = await attachLoop(c.ex, meta);
        const sectors = st.original.split('\n').reduce((n, l) => n + Number(l.trim().split(/\s+/)[1]), 0);
        await dmLoadAndResume(c.ex, st.dm, `0 ${sectors} era ${metaLoop} /dev/mapper/${base} ${ERA_BLOCK_SECTORS}`, tableFile('era'));
      }
      if (st.since === 0) {
        // Everything written from the era this checkpoint opens belongs to round 1 (earlier writes
        // land before the bulk copy reads the disk).
        st.since = await checkpoint(c.ex, st.dm);
        await writeState(c.ex, stateFile, st);
      }
    },

    async round(): Promise<Extent[]> {
      const st = await readState<LvState>(c.ex, stateFile);
      if (!st) throw new FerryError(ErrorTypes.DriverError, `dirty tracking of ${c.disk.vdev} of ${c.id} is not started`);
      const [metaLoop] = await loopsOf(c.ex, st.meta);
      if (!metaLoop) throw new FerryError(ErrorTypes.DriverError, `era metadata ${st.meta} of ${c.id} has no loop device`);
      const { extents, next } = await writtenSince(c.ex, st.dm, metaLoop, st.since, c.disk.bytes);
      st.since = next;
      await writeState(c.ex, stateFile, st);
      return extents;
    },

    async readPath() {
      // The linear copy of the LV's table: the same blocks, without era in the way.
      return (await dmExists(c.ex, base)) ? `/dev/mapper/${base}` : c.disk.path;
    },

    async stop() {
      const st = await readState<LvState>(c.ex, stateFile);
      if (st) {
        if ((await dmExists(c.ex, st.dm)) && (await dmTable(c.ex, st.dm)) !== st.original.trim()) {
          await dmLoadAndResume(c.ex, st.dm, st.original, tableFile('original'));
        }
      }
      await dmRemove(c.ex, base);
      await detachLoops(c.ex, meta);
      await runOk(c.ex, 'rm', ['-f', '--', meta, stateFile, tableFile('base'), tableFile('era'), tableFile('original')]);
    },
  };
}
