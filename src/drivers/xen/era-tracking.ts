// Device-mapper `era` on a Xen host: the write-set primitives that LV tracking (lv-tracking.ts)
// builds on, and the loop-device helpers both trackers use.
//
// Why era: PVH/PV disks are served by the in-kernel blkback, which has no QEMU behind it, so there
// is no QMP bitmap to ask; era works under any blkback disk, and its write sets live in its
// metadata device, not in our memory, so they survive a worker restart.
//
// Round protocol (lab-notes: a metadata snapshot only sees committed write sets, so checkpoint
// FIRST): `checkpoint` (commits the era that just ended and opens a new one), then
// `take_metadata_snap`, `era_invalidate --written-since SINCE`, `drop_metadata_snap`.
import type { Executor } from './executor.js';
import { runOk } from './executor.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { normalizeExtents, type Extent } from '../../shared/extents.js';

/** 128 sectors = 64 KiB, the same granularity as the QEMU driver's bitmaps. */
export const ERA_BLOCK_SECTORS = 128;
/**
 * Metadata for an era device over `diskBytes`: its array holds a few bytes per block, its write
 * sets a bit per block each, and it copies on write: 16 MiB plus 16 bytes per 64 KiB block (a
 * sparse file: 512 MiB for a 2 TiB disk, mostly never written).
 */
export function eraMetaBytes(diskBytes: number): number {
  const MiB = 1024 * 1024;
  return 16 * MiB + Math.ceil((Math.ceil(diskBytes / (ERA_BLOCK_SECTORS * 512)) * 16) / MiB) * MiB;
}

export async function dmExists(ex: Executor, name: string): Promise<boolean> {
  return (await ex.run('dmsetup', ['info', name])).code === 0;
}

/** The device's live table, one line per segment. */
export async function dmTable(ex: Executor, name: string): Promise<string> {
  return (await runOk(ex, 'dmsetup', ['table', name])).trim();
}

/** Loads `table` (one or more lines) as the device's inactive table; `resume` swaps it in atomically. */
export async function dmLoadAndResume(ex: Executor, name: string, table: string, tableFile: string): Promise<void> {
  // dmsetup's --table takes one line; a file takes a whole table.
  await ex.writeFile(tableFile, `${table}\n`);
  await runOk(ex, 'dmsetup', ['load', name, tableFile]);
  // resume suspends the device (flushing in-flight I/O), swaps the table and resumes it.
  await runOk(ex, 'dmsetup', ['resume', name]);
}

/** Creates `name` with `table` (one or more lines) and its /dev/mapper node. */
export async function dmCreate(ex: Executor, name: string, table: string, tableFile: string): Promise<void> {
  if (!(await dmExists(ex, name))) {
    await ex.writeFile(tableFile, `${table}\n`);
    await runOk(ex, 'dmsetup', ['create', name, tableFile]);
  }
  // Without udev (the lab's dom0, minimal hosts) nothing creates /dev/mapper/<name>: do it here.
  await runOk(ex, 'dmsetup', ['mknodes', name]);
}

/** Removes a dm device; missing is fine. A device just released by a domain may stay busy a moment. */
export async function dmRemove(ex: Executor, name: string): Promise<void> {
  for (let i = 0; await dmExists(ex, name); i++) {
    // --verifyudev: without udev (the lab's dom0) plain remove leaves a stale /dev/mapper node.
    const r = await ex.run('dmsetup', ['remove', '--verifyudev', name]);
    if (r.code === 0) break;
    if (i >= 10) throw new FerryError(ErrorTypes.DriverError, `dmsetup remove ${name} failed on ${ex.where}: ${r.stderr.trim()}`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

/** The loop devices backing `file` (`losetup -j` lists `/dev/loopN: ...`). */
export async function loopsOf(ex: Executor, file: string): Promise<string[]> {
  const out = await runOk(ex, 'losetup', ['-j', file]);
  return [...out.matchAll(/^(\/dev\/loop\d+):/gm)].map((m) => m[1]!);
}

export async function attachLoop(ex: Executor, file: string): Promise<string> {
  return (await loopsOf(ex, file))[0] ?? (await runOk(ex, 'losetup', ['-f', '--show', file])).trim();
}

export async function detachLoops(ex: Executor, file: string): Promise<void> {
  for (const loop of await loopsOf(ex, file).catch(() => [])) await runOk(ex, 'losetup', ['-d', loop]);
}

/** `dmsetup status` of era: `0 N era <meta block size> <used>/<total> <current era> <held root|->`. */
export async function currentEra(ex: Executor, dm: string): Promise<number> {
  const out = await runOk(ex, 'dmsetup', ['status', dm]);
  const m = /\bera\s+\d+\s+\d+\/\d+\s+(\d+)/.exec(out);
  if (!m) throw new FerryError(ErrorTypes.DriverError, `unexpected era status of ${dm}: ${out.trim()}`);
  return Number(m[1]);
}

/** Closes the running era (committing its write set) and returns the era now recording. */
export async function checkpoint(ex: Executor, dm: string): Promise<number> {
  await runOk(ex, 'dmsetup', ['message', dm, '0', 'checkpoint']);
  return currentEra(ex, dm);
}

/**
 * Parses era_invalidate's XML: `<block block="N"/>` and `<range begin="A" end = "B"/>` (end
 * exclusive; thin-provisioning-tools 0.9 really prints spaces around the second `=`).
 */
export function parseEraInvalidate(xml: string, diskBytes: number): Extent[] {
  const blockBytes = ERA_BLOCK_SECTORS * 512;
  const out: Extent[] = [];
  for (const m of xml.matchAll(/<block\s+block\s*=\s*"(\d+)"\s*\/>/g)) out.push({ offset: Number(m[1]) * blockBytes, length: blockBytes });
  for (const m of xml.matchAll(/<range\s+begin\s*=\s*"(\d+)"\s+end\s*=\s*"(\d+)"\s*\/>/g)) {
    const a = Number(m[1]);
    const b = Number(m[2]);
    out.push({ offset: a * blockBytes, length: (b - a) * blockBytes });
  }
  // Anything else in the output means a format we do not know: losing dirty blocks silently
  // would corrupt the destination, so refuse.
  const rest = xml
    .replace(/<block\s+block\s*=\s*"\d+"\s*\/>/g, '')
    .replace(/<range\s+begin\s*=\s*"\d+"\s+end\s*=\s*"\d+"\s*\/>/g, '')
    .replace(/<\/?blocks>/g, '')
    .trim();
  if (rest) throw new FerryError(ErrorTypes.DriverError, `unexpected era_invalidate output: ${JSON.stringify(xml.slice(0, 300))}`);
  // The last block may run past the end of a disk that is not a multiple of 64 KiB.
  return normalizeExtents(out)
    .filter((e) => e.offset < diskBytes)
    .map((e) => ({ offset: e.offset, length: Math.min(e.length, diskBytes - e.offset) }));
}

/**
 * Blocks of era device `dm` written in eras >= `since`, after closing the running era. Returns the
 * extents and the era the next round starts from.
 */
export async function writtenSince(ex: Executor, dm: string, metaDev: string, since: number, diskBytes: number): Promise<{ extents: Extent[]; next: number }> {
  const next = await checkpoint(ex, dm);
  // A snapshot held from an interrupted earlier round would make take_metadata_snap fail.
  await ex.run('dmsetup', ['message', dm, '0', 'drop_metadata_snap']);
  await runOk(ex, 'dmsetup', ['message', dm, '0', 'take_metadata_snap']);
  try {
    const xml = await runOk(ex, 'era_invalidate', ['--metadata-snapshot', '--written-since', String(since), metaDev]);
    return { extents: parseEraInvalidate(xml, diskBytes), next };
  } finally {
    await ex.run('dmsetup', ['message', dm, '0', 'drop_metadata_snap']);
  }
}
