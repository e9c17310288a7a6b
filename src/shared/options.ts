// The tunables of one migration, apart from the protocol (the workflow). What the user gives is
// merged over defaults here; the controller's validate activity checks the result.
// No Node built-ins: the workflow bundle imports this module.
import type { Codec } from '../dataplane/types.js';

export interface MigrationOptions {
  /** Disk chunk codec. Default `lzo` (the paper's). */
  codec: Codec;
  /** Bytes per data-plane chunk. Default 1 MiB. */
  chunkSize: number;
  /** Cap for disk and memory streams in bytes/s; 0 = unlimited. Default 0. */
  bandwidthBytesPerSec: number;
  /** The downtime budget: suspend only when the final sync is projected to fit. Default 2000, max 20000. */
  downtimeMs: number;
  /** Dirty rounds before giving up with WontConverge. Default 8. */
  maxRounds: number;
  /** TLS on the disk stream. Default true. */
  tls: boolean;
  /** Hash both disks while both sides are paused, before the point of no return. Default false. */
  verifyDisk: boolean;
  /** After success, keep the source's disks renamed aside (`<name>.ferry-migrated`) instead of removing them. Default false. */
  keepSourceDisks: boolean;
  /**
   * Breakpoints: after finishing each named phase the workflow holds until a `proceed` signal (or a
   * cancel). Operators use `memory` to approve the switchover in a maintenance window; tests use
   * them to cancel at an exact phase. Default none.
   */
  holdAfter: string[];
}

export const DEFAULT_OPTIONS: MigrationOptions = {
  codec: 'lzo',
  chunkSize: 1024 * 1024,
  bandwidthBytesPerSec: 0,
  downtimeMs: 2000,
  maxRounds: 8,
  tls: true,
  verifyDisk: false,
  keepSourceDisks: false,
  holdAfter: [],
};

export const MAX_DOWNTIME_MS = 20_000;

export function withDefaults(given: Partial<MigrationOptions> | undefined): MigrationOptions {
  const out: MigrationOptions = { ...DEFAULT_OPTIONS };
  for (const [k, v] of Object.entries(given ?? {})) {
    if (v !== undefined && v !== null && k in DEFAULT_OPTIONS) (out as unknown as Record<string, unknown>)[k] = v;
  }
  return out;
}

/**
 * The share of the downtime budget that the hypervisor's last memory round may take: what the
 * projected final disk sync leaves, halved for the switchover steps around it. A share too small
 * for the link never converges (QEMU keeps pre-copying); a larger one only lengthens the pause.
 */
export function memoryDowntimeMs(budgetMs: number, projectedDiskSyncMs = 0): number {
  const left = budgetMs - (Number.isFinite(projectedDiskSyncMs) ? projectedDiskSyncMs : budgetMs);
  return Math.max(100, Math.floor(left / 2));
}
