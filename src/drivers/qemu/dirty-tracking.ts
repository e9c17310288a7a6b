// Dirty-block rounds with QMP dirty bitmaps (lab-notes): one bitmap per round; a `transaction`
// adds the next round's bitmap and disables the current one atomically, so no write falls between
// rounds; the frozen bitmap is read through a read-only NBD export (`bitmaps: [name]`, meta
// context `qemu:dirty-bitmap:NAME`) and then removed. Round results are persisted, so taking the
// same round twice (an activity retry) returns the same extents instead of an empty later round.
// Used by the QEMU driver (its own QMP socket, one disk) and the libvirt driver (QMP through
// libvirt, one tracked disk per vdev): each call names the disk it works on in a TrackedDisk.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { normalizeExtents, type Extent } from '../../shared/extents.js';
import { NbdClient } from './nbd-client.js';
import { QmpCommandError } from './qmp.js';

export const DISK_NODE = 'disk0';
const BITMAP_PREFIX = 'ferry-dirty-';
const EXPORT_PREFIX = 'ferry-';
export const LIVE_EXPORT = 'ferry-disk';
export const DEFAULT_GRANULARITY = 65536;

/** QMP however it is reached: QEMU's own socket (QmpClient) or libvirt's qemu-monitor-command. */
export interface QmpExecutor {
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
}

/** One disk under tracking: its block node, the NBD socket its exports are served on, and where its rounds are kept. */
export interface TrackedDisk {
  node: string;
  nbdSocket: string;
  /** JSON file holding the tracking state (active bitmap, pending round). */
  stateFile: string;
  /** Folder of taken rounds (`<round>.json`). */
  roundsDir: string;
  /** Export ids of this disk start with it (unique per QEMU process); default `ferry-`. */
  exportPrefix?: string;
}

const exportPrefixOf = (d: TrackedDisk) => d.exportPrefix ?? EXPORT_PREFIX;

interface TrackingState {
  active: string;
  seq: number;
  /** A round being taken: survives a crash between the transaction and saving its extents. */
  pending?: { round: number; frozen: string; next: string };
}

async function loadState(d: TrackedDisk): Promise<TrackingState | null> {
  try {
    return JSON.parse(await readFile(d.stateFile, 'utf8')) as TrackingState;
  } catch {
    return null;
  }
}

async function atomicWrite(file: string, data: string): Promise<void> {
  await writeFile(`${file}.tmp`, data);
  await rename(`${file}.tmp`, file);
}

async function saveState(d: TrackedDisk, st: TrackingState): Promise<void> {
  await atomicWrite(d.stateFile, JSON.stringify(st));
}

async function bitmapNames(q: QmpExecutor, nodeName: string): Promise<Set<string>> {
  const nodes = await q.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string }> }>>('query-named-block-nodes', { flat: true });
  const node = nodes.find((n) => n['node-name'] === nodeName);
  return new Set((node?.['dirty-bitmaps'] ?? []).map((b) => b.name));
}

/** Starts QEMU's NBD server on the instance's unix socket (no-op when it already runs). */
export async function ensureNbdServer(q: QmpExecutor, nbdSocket: string): Promise<void> {
  try {
    await q.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
  } catch (e) {
    if (!(e instanceof QmpCommandError && /already running/i.test(e.desc))) throw e;
  }
}

async function exportIds(q: QmpExecutor): Promise<string[]> {
  const ex = await q.execute<Array<{ id: string }>>('query-block-exports');
  return ex.map((e) => e.id);
}

export async function ensureExport(q: QmpExecutor, d: Pick<TrackedDisk, 'node' | 'nbdSocket'>, id: string, bitmap?: string): Promise<void> {
  await ensureNbdServer(q, d.nbdSocket);
  if ((await exportIds(q)).includes(id)) return;
  await q.execute('block-export-add', {
    type: 'nbd',
    id,
    'node-name': d.node,
    name: id,
    writable: false,
    ...(bitmap ? { bitmaps: [bitmap] } : {}),
  });
}

/** Deletes exports (hard: drops their clients) and waits until QEMU has let go of them. */
export async function removeExports(q: QmpExecutor, match: (id: string) => boolean = (id) => id.startsWith(EXPORT_PREFIX)): Promise<void> {
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

export async function startTracking(q: QmpExecutor, d: TrackedDisk, granularity = DEFAULT_GRANULARITY): Promise<void> {
  if (!Number.isInteger(granularity) || granularity < 512 || (granularity & (granularity - 1)) !== 0) {
    throw new FerryError(ErrorTypes.BadInput, `dirty bitmap granularity must be a power of two >= 512, got ${granularity}`);
  }
  const st = await loadState(d);
  const names = await bitmapNames(q, d.node);
  if (st && names.has(st.active)) return; // already tracking
  const first = `${BITMAP_PREFIX}1`;
  if (!names.has(first)) await q.execute('block-dirty-bitmap-add', { node: d.node, name: first, granularity });
  await mkdir(d.roundsDir, { recursive: true });
  await saveState(d, { active: first, seq: 1 });
}

function roundFile(d: TrackedDisk, round: number): string {
  return join(d.roundsDir, `${round}.json`);
}

/** A round already taken (an activity retry), without touching QEMU; null when it is not. */
export async function takenRound(d: TrackedDisk, round: number): Promise<Extent[] | null> {
  if (!Number.isInteger(round) || round < 0) throw new FerryError(ErrorTypes.BadInput, `bad round ${round}`);
  try {
    return JSON.parse(await readFile(roundFile(d, round), 'utf8')) as Extent[];
  } catch {
    return null;
  }
}

export async function takeRound(q: QmpExecutor, d: TrackedDisk, round: number): Promise<Extent[]> {
  const taken = await takenRound(d, round);
  if (taken) return taken;
  const st = await loadState(d);
  if (!st) throw new FerryError(ErrorTypes.DriverError, `dirty tracking is not started for ${d.stateFile}`);
  if (!st.pending || st.pending.round !== round) {
    st.pending = { round, frozen: st.active, next: `${BITMAP_PREFIX}${st.seq + 1}` };
    st.seq += 1;
    await saveState(d, st);
  }
  const { frozen, next } = st.pending;
  const names = await bitmapNames(q, d.node);
  if (!names.has(next)) {
    if (!names.has(frozen)) throw new FerryError(ErrorTypes.DriverError, `dirty bitmap ${frozen} is gone: tracking was lost (QEMU restarted?)`);
    const granularity = await bitmapGranularity(q, d.node, frozen);
    await q.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-add', data: { node: d.node, name: next, granularity } },
        { type: 'block-dirty-bitmap-disable', data: { node: d.node, name: frozen } },
      ],
    });
  }
  st.active = next;
  await saveState(d, st);

  let extents: Extent[] = [];
  if (names.has(frozen) || (await bitmapNames(q, d.node)).has(frozen)) {
    const exportId = `${exportPrefixOf(d)}bm-${frozen}`;
    await ensureExport(q, d, exportId, frozen);
    const nbd = await NbdClient.connect({ socketPath: d.nbdSocket, exportName: exportId, metaContext: `qemu:dirty-bitmap:${frozen}` });
    try {
      extents = normalizeExtents(await nbd.blockStatus(1));
    } finally {
      await nbd.close();
    }
    await mkdir(d.roundsDir, { recursive: true });
    await atomicWrite(roundFile(d, round), JSON.stringify(extents));
    await removeExports(q, (id) => id === exportId);
    await q.execute('block-dirty-bitmap-remove', { node: d.node, name: frozen });
  }
  delete st.pending;
  await saveState(d, st);
  return extents;
}

async function bitmapGranularity(q: QmpExecutor, nodeName: string, name: string): Promise<number> {
  const nodes = await q.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string; granularity: number }> }>>('query-named-block-nodes', { flat: true });
  const bm = nodes.find((n) => n['node-name'] === nodeName)?.['dirty-bitmaps']?.find((b) => b.name === name);
  return bm?.granularity ?? DEFAULT_GRANULARITY;
}

/** Removes every Ferry bitmap and bitmap export of this disk, and forgets its rounds. Idempotent. */
export async function stopTracking(q: QmpExecutor, d: TrackedDisk): Promise<void> {
  await removeExports(q, (id) => id.startsWith(`${exportPrefixOf(d)}bm-`));
  for (const name of await bitmapNames(q, d.node)) {
    if (name.startsWith(BITMAP_PREFIX)) await q.execute('block-dirty-bitmap-remove', { node: d.node, name });
  }
  await forgetTracking(d);
}

/** Drops the tracking files alone (the QEMU process is gone, and its bitmaps with it). */
export async function forgetTracking(d: TrackedDisk): Promise<void> {
  await rm(d.stateFile, { force: true });
  await rm(d.roundsDir, { recursive: true, force: true });
}
