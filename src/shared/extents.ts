/** A byte range of a disk. */
export interface Extent {
  offset: number;
  length: number;
}

export function totalLength(extents: readonly Extent[]): number {
  let n = 0;
  for (const e of extents) n += e.length;
  return n;
}

/** Sorts by offset and merges touching or overlapping extents. */
export function normalizeExtents(extents: readonly Extent[]): Extent[] {
  const sorted = [...extents].filter((e) => e.length > 0).sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, e.offset + e.length - last.offset);
    } else {
      out.push({ offset: e.offset, length: e.length });
    }
  }
  return out;
}

/** The part of `extents` at or above `offset` (used to resume after an acknowledged offset). */
export function extentsFrom(extents: readonly Extent[], offset: number): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const end = e.offset + e.length;
    if (end <= offset) continue;
    const start = Math.max(e.offset, offset);
    out.push({ offset: start, length: end - start });
  }
  return out;
}
