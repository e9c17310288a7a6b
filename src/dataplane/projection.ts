// Projects how long the final disk sync (guest paused) will take, so the workflow suspends the
// guest only when it fits the downtime budget. Pure arithmetic, no Node built-ins: the workflow
// bundle imports it.

export interface ProjectionInput {
  /** Measured logical throughput of the data plane (bytes/s). */
  rateBytesPerSec?: number;
  /** Size of the last dirty round sent (bytes). */
  lastRoundBytes: number;
  /** Its duration; gives the rate when `rateBytesPerSec` is missing or 0. */
  lastRoundMs?: number;
  /**
   * Guest write rate (bytes/s), when measured. Without it, the final round is assumed to be no
   * bigger than the last one: the steady state of a converging guest.
   */
  dirtyRateBytesPerSec?: number;
  /** Time between the end of the last round and the pause (memory pre-copy), added to the dirtying window. */
  leadMs?: number;
  /** Fixed cost of one stream: connect, TLS handshake, fdatasync, acknowledgement. */
  overheadMs?: number;
}

export const DEFAULT_STREAM_OVERHEAD_MS = 100;

/** Bytes the final round is expected to carry. */
export function projectFinalRoundBytes(p: ProjectionInput): number {
  const rate = effectiveRate(p);
  if (p.dirtyRateBytesPerSec === undefined) return p.lastRoundBytes;
  if (!(rate > 0)) return Infinity;
  const windowSec = p.lastRoundBytes / rate + (p.leadMs ?? 0) / 1000;
  return p.dirtyRateBytesPerSec * windowSec;
}

/** Projected duration of the final round in ms; Infinity when it cannot be estimated or never converges. */
export function projectFinalRoundMs(p: ProjectionInput): number {
  const rate = effectiveRate(p);
  const overhead = p.overheadMs ?? DEFAULT_STREAM_OVERHEAD_MS;
  if (p.dirtyRateBytesPerSec !== undefined && rate > 0 && p.dirtyRateBytesPerSec >= rate) return Infinity;
  const bytes = projectFinalRoundBytes(p);
  if (bytes === 0) return overhead;
  if (!(rate > 0) || !Number.isFinite(bytes)) return Infinity;
  return Math.ceil((bytes / rate) * 1000 + overhead);
}

function effectiveRate(p: ProjectionInput): number {
  if (p.rateBytesPerSec && p.rateBytesPerSec > 0) return p.rateBytesPerSec;
  if (p.lastRoundMs && p.lastRoundMs > 0 && p.lastRoundBytes > 0) return (p.lastRoundBytes / p.lastRoundMs) * 1000;
  return 0;
}
