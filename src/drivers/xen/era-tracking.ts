// Guest disk devices and dirty-block tracking on a Xen host with device-mapper `era`.
//
// Every Ferry-managed Xen disk is a raw file -> loop device -> dm `era` device `ferry-<id>`, and the
// domain's disk is `phy:/dev/mapper/ferry-<id>`. Why era and not the qdisk backend's QMP bitmaps:
// PVH/PV disks here are served by the in-kernel blkback (`phy:`), which has no QEMU behind it, so
// there is no QMP to ask; era works under any blkback disk, costs a table line, and survives a
// worker restart because its write sets live in its metadata device, not in our memory.
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
const META_BYTES = 16 * 1024 * 1024;

export const dmName = (id: string) => `ferry-${id}`;
export const dmPath = (id: string) => `/dev/mapper/${dmName(id)}`;

export async function dmExists(ex: Executor, id: string): Promise<boolean> {
  return (await ex.run('dmsetup', ['info', dmName(id)])).code === 0;
}

/** The loop device backing `file`, or null (`losetup -j` lists `/dev/loopN: ...`). */
export async function loopOf(ex: Executor, file: string): Promise<string | null> {
  const out = await runOk(ex, 'losetup', ['-j', file]);
  const m = /^(\/dev\/loop\d+):/m.exec(out);
  return m ? m[1] : null;
}

async function attachLoop(ex: Executor, file: string): Promise<string> {
  return (await loopOf(ex, file)) ?? (await runOk(ex, 'losetup', ['-f', '--show', file])).trim();
}

/** Creates the era device over `diskFile` (metadata in `metaFile`), if it is not there yet. */
export async function ensureEraDevice(ex: Executor, id: string, diskFile: string, metaFile: string): Promise<string> {
  if (await dmExists(ex, id)) {
    await runOk(ex, 'dmsetup', ['mknodes', dmName(id)]);
    return dmPath(id);
  }
  // A fresh, zeroed metadata device: era formats it on first use.
  const oldMeta = await loopOf(ex, metaFile);
  if (oldMeta) await runOk(ex, 'losetup', ['-d', oldMeta]);
  await runOk(ex, 'rm', ['-f', metaFile]);
  await runOk(ex, 'truncate', ['-s', String(META_BYTES), metaFile]);
  const data = await attachLoop(ex, diskFile);
  const meta = await attachLoop(ex, metaFile);
  const sectors = (await runOk(ex, 'blockdev', ['--getsz', data])).trim();
  if (!/^\d+$/.test(sectors)) throw new FerryError(ErrorTypes.DriverError, `blockdev --getsz ${data} said ${JSON.stringify(sectors)}`);
  await runOk(ex, 'dmsetup', ['create', dmName(id), '--table', `0 ${sectors} era ${meta} ${data} ${ERA_BLOCK_SECTORS}`]);
  // Without udev (the lab's dom0, minimal hosts) nothing creates /dev/mapper/<name>: do it here.
  await runOk(ex, 'dmsetup', ['mknodes', dmName(id)]);
  return dmPath(id);
}

/** Removes the era device and detaches both loop devices; missing parts are fine. */
export async function removeEraDevice(ex: Executor, id: string, diskFile: string, metaFile: string): Promise<void> {
  if (await dmExists(ex, id)) {
    // A domain being torn down may still hold it for a moment.
    for (let i = 0; ; i++) {
      const r = await ex.run('dmsetup', ['remove', dmName(id)]);
      if (r.code === 0 || !(await dmExists(ex, id))) break;
      if (i >= 10) throw new FerryError(ErrorTypes.DriverError, `dmsetup remove ${dmName(id)} failed: ${r.stderr.trim()}`);
      await new Promise((res) => setTimeout(res, 500));
    }
  }
  for (const f of [diskFile, metaFile]) {
    const loop = await loopOf(ex, f).catch(() => null);
    if (loop) await runOk(ex, 'losetup', ['-d', loop]);
  }
}

/** `dmsetup status` of era: `0 N era <meta block size> <used>/<total> <current era> <held root|->`. */
export async function currentEra(ex: Executor, id: string): Promise<number> {
  const out = await runOk(ex, 'dmsetup', ['status', dmName(id)]);
  const m = /\bera\s+\d+\s+\d+\/\d+\s+(\d+)/.exec(out);
  if (!m) throw new FerryError(ErrorTypes.DriverError, `unexpected era status of ${dmName(id)}: ${out.trim()}`);
  return Number(m[1]);
}

/** Closes the running era (committing its write set) and returns the era now recording. */
export async function checkpoint(ex: Executor, id: string): Promise<number> {
  await runOk(ex, 'dmsetup', ['message', dmName(id), '0', 'checkpoint']);
  return currentEra(ex, id);
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
 * Blocks written in eras >= `since`, after closing the running era. Returns the extents and the
 * era the next round starts from.
 */
export async function writtenSince(ex: Executor, id: string, metaFile: string, since: number, diskBytes: number): Promise<{ extents: Extent[]; next: number }> {
  const next = await checkpoint(ex, id);
  const meta = await loopOf(ex, metaFile);
  if (!meta) throw new FerryError(ErrorTypes.DriverError, `era metadata ${metaFile} of ${id} has no loop device`);
  // A snapshot held from an interrupted earlier round would make take_metadata_snap fail.
  await ex.run('dmsetup', ['message', dmName(id), '0', 'drop_metadata_snap']);
  await runOk(ex, 'dmsetup', ['message', dmName(id), '0', 'take_metadata_snap']);
  try {
    const xml = await runOk(ex, 'era_invalidate', ['--metadata-snapshot', '--written-since', String(since), meta]);
    return { extents: parseEraInvalidate(xml, diskBytes), next };
  } finally {
    await ex.run('dmsetup', ['message', dmName(id), '0', 'drop_metadata_snap']);
  }
}
