// The tunables of one migration, apart from the protocol (the workflow): their resolved shape,
// built-in defaults and limits. What a caller writes is parsed by the one schema in
// options-schema.ts (config file, CLI, workflow input and the controller's validation all go
// through it). No Node built-ins: the workflow bundle imports this module.
import type { Codec } from '../dataplane/types.js';

/** A migration's options once resolved; numbers carry the unit their name says. */
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

/**
 * What a caller may write (config `defaults:`, `ferry migrate` flags, the workflow input's
 * `options`): every key optional; a size in bytes or with a unit ('1MiB'); a rate or a duration
 * with its unit ('100Mbit', '2s'), or 0 (a bare number there would leave the unit to a guess).
 */
export interface MigrationOptionsInput {
  codec?: Codec;
  chunkSize?: number | string;
  bandwidth?: number | string;
  downtime?: number | string;
  maxRounds?: number | string;
  tls?: boolean;
  verify?: boolean;
  keepSource?: boolean;
  holdAfter?: string[];
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

/** The paper's dead zone was 20-24 s; Ferry never lets the guest stay paused that long. */
export const MAX_DOWNTIME_MS = 20_000;

/** The one set of limits. Chunks are whole 4 KiB blocks: the smallest dirty-tracking grain. */
export const OPTION_LIMITS = {
  chunkSize: { min: 4096, max: 64 * 1024 * 1024, multipleOf: 4096 },
  downtimeMs: { min: 1, max: MAX_DOWNTIME_MS },
  maxRounds: { min: 1, max: 64 },
} as const;

/**
 * The share of the downtime budget that the hypervisor's last memory round may take: what the
 * projected final disk sync leaves, halved for the switchover steps around it. A share too small
 * for the link never converges (QEMU keeps pre-copying); a larger one only lengthens the pause.
 */
export function memoryDowntimeMs(budgetMs: number, projectedDiskSyncMs = 0): number {
  const left = budgetMs - (Number.isFinite(projectedDiskSyncMs) ? projectedDiskSyncMs : budgetMs);
  return Math.max(100, Math.floor(left / 2));
}
