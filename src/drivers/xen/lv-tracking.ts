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
import { ERA_BLOCK_SECTORS, eraMetaBytes, attachLoop, detachLoops, dmCreate, dmExists, dmLoadAndResume, dmRemove, dmTable, checkpoint, loopsOf, writtenSince } from './era-tracking.js';
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
  /** eras[k]: the era opened by round k's checkpoint (eras[0]: by the start). 0 = not started. */
  eras: number[];
}

export function lvTracker(c: TrackerContext): DiskTracker {
  const stateFile = `${c.dir}/track-${c.disk.vdev}.json`;
  const base = `ferry-${c.id}-${c.disk.vdev}-base`;
  const meta = `${c.dir}/${c.disk.vdev}.era-meta`;
  const tableFile = (what: string) => `${c.dir}/${c.disk.vdev}.${what}.table`;

  /** The LV's live table is era over Ferry's `-base` device. */
  async function ours(live: string): Promise<boolean> {
    // `0 N era META_DEV ORIGIN_DEV 128`, devices as major:minor.
    const origin = /^0 \d+ era \S+ (\d+:\d+) /.exec(live)?.[1];
    if (!origin || !(await dmExists(c.ex, base))) return false;
    const devno = (await runOk(c.ex, 'dmsetup', ['info', '-c', '--noheadings', '-o', 'major,minor', base])).trim();
    return devno === origin;
  }

  /** A swap that failed half-way can leave the device suspended: the guest's I/O would hang. */
  async function assertActive(dm: string): Promise<void> {
    const out = await runOk(c.ex, 'dmsetup', ['info', dm]);
    if (/^State:\s+SUSPENDED/m.test(out)) {
      await runOk(c.ex, 'dmsetup', ['resume', dm]);
      throw new FerryError(ErrorTypes.DriverError, `${dm} was left suspended by a failed table swap; resumed it`);
    }
  }

  async function info(): Promise<LvInfo> {
    const i = await lvInfo(c.ex, c.disk.path);
    if (!i) throw new FerryError(ErrorTypes.DriverError, `${c.disk.path} (${c.disk.vdev} of ${c.id}) is not a logical volume on ${c.ex.where}`);
    return i;
  }

  return {
    async refusal() {
      const i = await lvInfo(c.ex, c.disk.path);
      if (!i) return `${c.disk.path} is not an LVM logical volume that lvs knows`;
      const table = await dmTable(c.ex, i.dm);
      if (await ours(table)) return null; // an attempt of this migration that is still going
      const targets = [...new Set(table.split('\n').map((l) => l.trim().split(/\s+/)[2]))];
      if (targets.length !== 1 || targets[0] !== 'linear') {
        const what = i.attr.startsWith('o') ? 'the origin of a snapshot' : i.attr.startsWith('V') ? 'a thin volume' : `mapped by ${targets.join(', ')}`;
        return `${c.disk.path} is ${what} (dm table target ${targets.join(', ')}): Ferry tracks writes only under linear LVs. Remove the snapshot (lvremove) or move the data to a linear LV, then migrate`;
      }
      if (!(await c.ex.run('dmsetup', ['targets'])).stdout.includes('era') && (await c.ex.run('modprobe', ['dm-era'])).code !== 0) {
        return `this host has no device-mapper era target (modprobe dm-era failed)`;
      }
      if ((await c.ex.run('which', ['era_invalidate'])).code !== 0) return 'era_invalidate is not installed on this host (apt-get install thin-provisioning-tools)';
      return null;
    },

    async start() {
      const i = await info();
      const live = await dmTable(c.ex, i.dm);
      let st = await readState<LvState>(c.ex, stateFile);
      if (!st || !(await ours(live))) {
        // Not under Ferry's era (a fresh start, or state left by a run whose table is gone): the
        // LV's own table is the live one. Kept on the host before anything changes, so a crash
        // can always restore it.
        if (/\bera\b/.test(live)) throw new FerryError(ErrorTypes.DriverError, `${c.disk.path} already has an era table that Ferry did not put there: ${live}`);
        st = { dm: i.dm, original: live, base, meta, eras: [] };
        await runOk(c.ex, 'mkdir', ['-p', c.dir]);
        await writeState(c.ex, stateFile, st);
        await dmRemove(c.ex, base);
        await dmCreate(c.ex, base, st.original, tableFile('base'));
        // A fresh, zeroed metadata device, sized for the LV: era formats it on first use.
        await detachLoops(c.ex, meta);
        await runOk(c.ex, 'rm', ['-f', meta]);
        await runOk(c.ex, 'truncate', ['-s', String(eraMetaBytes(c.disk.bytes)), meta]);
        const metaLoop = await attachLoop(c.ex, meta);
        const sectors = st.original.split('\n').reduce((n, l) => n + Number(l.trim().split(/\s+/)[1]), 0);
        await dmLoadAndResume(c.ex, st.dm, `0 ${sectors} era ${metaLoop} /dev/mapper/${base} ${ERA_BLOCK_SECTORS}`, tableFile('era'));
      }
      await assertActive(st.dm);
      if (st.eras.length === 0) {
        // Everything written from the era this checkpoint opens belongs to round 1 (earlier writes
        // land before the bulk copy reads the disk).
        st.eras = [await checkpoint(c.ex, st.dm)];
        await writeState(c.ex, stateFile, st);
      }
    },

    async round(n: number): Promise<Extent[]> {
      const st = await readState<LvState>(c.ex, stateFile);
      if (!st || st.eras.length === 0) throw new FerryError(ErrorTypes.DriverError, `dirty tracking of ${c.disk.vdev} of ${c.id} is not started`);
      if (n > st.eras.length) throw new FerryError(ErrorTypes.DriverError, `round ${n} of ${c.disk.vdev} asked before round ${st.eras.length}`);
      const [metaLoop] = await loopsOf(c.ex, st.meta);
      if (!metaLoop) throw new FerryError(ErrorTypes.DriverError, `era metadata ${st.meta} of ${c.id} has no loop device`);
      // From the era the round before this one opened: era marks a block when a write to it is
      // issued, and that write may still be in flight when its round reads the block. Listing
      // every block once more in the next round reads it again after it landed. A retry of round
      // n lists from the same era, so it answers at least what the first attempt did.
      const since = st.eras[Math.max(0, n - 2)]!;
      const { extents, next } = await writtenSince(c.ex, st.dm, metaLoop, since, c.disk.bytes);
      st.eras = [...st.eras.slice(0, n), next];
      await writeState(c.ex, stateFile, st);
      return extents;
    },

    async readPath() {
      // The linear copy of the LV's table: the same blocks, without era in the way.
      return (await dmExists(c.ex, base)) ? `/dev/mapper/${base}` : c.disk.path;
    },

    async stop() {
      const st = await readState<LvState>(c.ex, stateFile);
      // Only Ferry's era over its own -base is replaced: a table anything else put there stays.
      if (st && (await dmExists(c.ex, st.dm)) && (await ours(await dmTable(c.ex, st.dm)))) {
        await dmLoadAndResume(c.ex, st.dm, st.original, tableFile('original'));
      }
      await dmRemove(c.ex, base);
      await detachLoops(c.ex, meta);
      await runOk(c.ex, 'rm', ['-f', '--', meta, stateFile, tableFile('base'), tableFile('era'), tableFile('original')]);
    },
  };
}
