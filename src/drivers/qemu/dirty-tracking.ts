// Dirty-block rounds with QMP dirty bitmaps (lab-notes): one bitmap per round; a `transaction`
// adds the next round's bitmap and disables the current one atomically, so no write falls between
// rounds; the frozen bitmap is read through a read-only NBD export (`bitmaps: [name]`, meta
// context `qemu:dirty-bitmap:NAME`) and then removed. Round results are persisted, so taking the
// same round twice (an activity retry) returns the same extents instead of an empty later round.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { normalizeExtents, type Extent } from '../../shared/extents.js';
import { NbdClient } from './nbd-client.js';
import { QmpCommandError, withQmp, type QmpClient } from './qmp.js';
import type { InstancePaths } from './qemu-process.js';

export const DISK_NODE = 'disk0';
const BITMAP_PREFIX = 'ferry-dirty-';
const EXPORT_PREFIX = 'ferry-';
export const LIVE_EXPORT = 'ferry-disk';
export const DEFAULT_GRANULARITY = 65536;

interface TrackingState {
  active: string;
  seq: number;
  /** A round being taken: survives a crash between the transaction and saving its extents. */
  pending?: { round: number; frozen: string; next: string };
}

async function loadState(paths: InstancePaths): Promise<TrackingState | null> {
  try {
    return JSON.parse(await readFile(paths.tracking, 'utf8')) as TrackingState;
  } catch {
    return null;
  }
}

async function atomicWrite(file: string, data: string): Promise<void> {
  await writeFile(`${file}.tmp`, data);
  await rename(`${file}.tmp`, file);
}

async function saveState(paths: InstancePaths, st: TrackingState): Promise<void> {
  await atomicWrite(paths.tracking, JSON.stringify(st));
}

async function bitmapNames(q: QmpClient): Promise<Set<string>> {
  const nodes = await q.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string }> }>>('query-named-block-nodes', { flat: true });
  const node = nodes.find((n) => n['node-name'] === DISK_NODE);
  return new Set((node?.['dirty-bitmaps'] ?? []).map((b) => b.name));
}

/** Starts QEMU's NBD server on the instance's unix socket (no-op when it already runs). */
export async function ensureNbdServer(q: QmpClient, paths: InstancePaths): Promise<void> {
  try {
    await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: paths.nbd } } });
  } catch (e) {
    if (!(e instanceof QmpCommandError && /already running/i.test(e.desc))) throw e;
  }
}

async function exportIds(q: QmpClient): Promise<string[]> {
  const ex = await q.execute<Array<{ id: string }>>('query-block-exports');
  return ex.map((e) => e.id);
}

export async function ensureExport(q: QmpClient, paths: InstancePaths, id: string, bitmap?: string): Promise<void> {
  await ensureNbdServer(q, paths);
  if ((await exportIds(q)).includes(id)) return;
  await q.execute('block-export-add', {
    type: 'nbd',
    id,
    'node-name': DISK_NODE,
    name: id,
    writable: false,
    ...(bitmap ? { bitmaps: [bitmap] } : {}),
  });
}

/** Deletes exports (hard: drops their clients) and waits until QEMU has let go of them. */
export async function removeExports(q: QmpClient, match: (id: string) => boolean = (id) => id.startsWith(EXPORT_PREFIX)): Promise<void> {
  for (const id of (await exportIds(q)).filter(match)) {
    try {
      await q.execute('block-export-del', { id, mode: 'hard' });
    } catch (e) {
      // Already being deleted: waiting below is all that is left to do.
      if (!(e instanceof QmpCommandError)) throw e;
    }
  }
  const deadline = Date.now() + 15_000;
  while ((await exportIds(q)).some(match)) {
    if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, 'NBD export still held after 15 s');
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function startTracking(paths: InstancePaths, granularity = DEFAULT_GRANULARITY): Promise<void> {
  if (!Number.isInteger(granularity) || granularity < 512 || (granularity & (granularity - 1)) !== 0) {
    throw new FerryError(ErrorTypes.BadInput, `dirty bitmap granularity must be a power of two >= 512, got ${granularity}`);
  }
  await withQmp(paths.qmp, async (q) => {
    const st = await loadState(paths);
    const names = await bitmapNames(q);
    if (st && names.has(st.active)) return; // already tracking
    const first = `${BITMAP_PREFIX}1`;
    if (!names.has(first)) await q.execute('block-dirty-bitmap-add', { node: DISK_NODE, name: first, granularity });
    await mkdir(paths.rounds, { recursive: true });
    await saveState(paths, { active: first, seq: 1 });
  });
}

function roundFile(paths: InstancePaths, round: number): string {
  return join(paths.rounds, `${round}.json`);
}

export async function takeRound(paths: InstancePaths, round: number): Promise<Extent[]> {
  if (!Number.isInteger(round) || round < 0) throw new FerryError(ErrorTypes.BadInput, `bad round ${round}`);
  try {
    return JSON.parse(await readFile(roundFile(paths, round), 'utf8')) as Extent[];
  } catch {
    // not taken yet
  }
  return withQmp(paths.qmp, async (q) => {
    const st = await loadState(paths);
    if (!st) throw new FerryError(ErrorTypes.DriverError, `dirty tracking is not started for ${paths.dir}`);
    if (!st.pending || st.pending.round !== round) {
      st.pending = { round, frozen: st.active, next: `${BITMAP_PREFIX}${st.seq + 1}` };
      st.seq += 1;
      await saveState(paths, st);
    }
    const { frozen, next } = st.pending;
    const names = await bitmapNames(q);
    if (!names.has(next)) {
      if (!names.has(frozen)) throw new FerryError(ErrorTypes.DriverError, `dirty bitmap ${frozen} is gone: tracking was lost (QEMU restarted?)`);
      const granularity = await bitmapGranularity(q, frozen);
      await q.execute('transaction', {
        actions: [
          { type: 'block-dirty-bitmap-add', data: { node: DISK_NODE, name: next, granularity } },
          { type: 'block-dirty-bitmap-disable', data: { node: DISK_NODE, name: frozen } },
        ],
      });
    }
    st.active = next;
    await saveState(paths, st);

    let extents: Extent[] = [];
    if (names.has(frozen) || (await bitmapNames(q)).has(frozen)) {
      const exportId = `${EXPORT_PREFIX}bm-${frozen}`;
      await ensureExport(q, paths, exportId, frozen);
      const nbd = await NbdClient.connect({ socketPath: paths.nbd, exportName: exportId, metaContext: `qemu:dirty-bitmap:${frozen}` });
      try {
        extents = normalizeExtents(await nbd.blockStatus(1));
      } finally {
        await nbd.close();
      }
      await mkdir(paths.rounds, { recursive: true });
      await atomicWrite(roundFile(paths, round), JSON.stringify(extents));
      await removeExports(q, (id) => id === exportId);
      await q.execute('block-dirty-bitmap-remove', { node: DISK_NODE, name: frozen });
    }
    delete st.pending;
    await saveState(paths, st);
    return extents;
  });
}

async function bitmapGranularity(q: QmpClient, name: string): Promise<number> {
  const nodes = await q.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string; granularity: number }> }>>('query-named-block-nodes', { flat: true });
  const bm = nodes.find((n) => n['node-name'] === DISK_NODE)?.['dirty-bitmaps']?.find((b) => b.name === name);
  return bm?.granularity ?? DEFAULT_GRANULARITY;
}

/** Removes every Ferry bitmap and bitmap export, and forgets the rounds. Idempotent. */
export async function stopTracking(paths: InstancePaths, q: QmpClient): Promise<void> {
  await removeExports(q, (id) => id.startsWith(`${EXPORT_PREFIX}bm-`));
  for (const name of await bitmapNames(q)) {
    if (name.startsWith(BITMAP_PREFIX)) await q.execute('block-dirty-bitmap-remove', { node: DISK_NODE, name });
  }
  await rm(paths.tracking, { force: true });
  await rm(paths.rounds, { recursive: true, force: true });
}
