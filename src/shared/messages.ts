// Workflow messages (query, signal, update) and the workflow's input and result shapes, shared by
// the workflow, the activities, the CLI and the tests.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { MigrationOptions, MigrationOptionsInput } from './options.js';
import type { Phase } from './names.js';

export interface MigrateInput {
  instanceId: string;
  destination: string;
  /**
   * What the caller asks for, in the units people write ('2s', '1MiB', '100Mbit') or as numbers.
   * The controller resolves it (caller, then the config file's defaults, then built-in defaults)
   * through the one options schema (src/shared/options-schema.ts).
   */
  options?: MigrationOptionsInput;
}

export interface SyncNodeInput {
  node: string;
}

/** What Inventory.syncInstances did with what a host said it runs. */
export interface SyncReport {
  node: string;
  added: string[];
  updated: string[];
  unchanged: string[];
  /** Found on the host but not recorded, with the reason (another host holds the id, a migration runs). */
  conflicts: { id: string; reason: string }[];
  /** Recorded on this node, not found on the host: left as they are, for the operator to look at. */
  missing: string[];
  /** The node's recorded capacity is smaller than what it runs. */
  overCapacity: boolean;
}

/** What `ferry node sync` reports: the inventory's side, and the guests the host cannot offer, with the reason. */
export interface SyncNodeResult extends SyncReport {
  refused: { name: string; reason: string }[];
}

export interface PhaseEvent {
  phase: Phase;
  at: number;
  detail?: string;
}

/** One disk stream while it runs: `bulk`, `round-N`, `final`. */
export interface DiskStreamProgress {
  stream: string;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  wireBytes: number;
  /** Time left at the current rate; absent while the rate is unknown. */
  etaMs?: number;
}

/** The hypervisor's memory pre-copy while it runs. */
export interface MemoryStreamProgress {
  /** The hypervisor's own word for its state (QEMU `active`, `pre-switchover`; Xen `xl migrate`). */
  status: string;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  rateBytesPerSec: number;
  /** QEMU: pages the guest dirties per second; QEMU pre-copy iteration (dirty-sync-count). */
  dirtyPagesRate?: number;
  iteration?: number;
  etaMs?: number;
}

/** A finished stream, kept for `ferry show`. */
export interface StreamRecord {
  stream: string;
  kind: 'disk' | 'memory';
  startedAt: number;
  endedAt: number;
  bytes: number;
  wireBytes: number;
}

/** One point of the throughput picture: bytes done so far by the stream running at `at`. */
export interface ProgressSample {
  at: number;
  kind: 'disk' | 'memory';
  stream: string;
  bytesDone: number;
  rateBytesPerSec: number;
}

/**
 * The pause, from the source stopping to the destination running, in its parts (ms): the last
 * disk round while stopped, the hypervisor's switchover (last memory pages and CPU state; a driver
 * that hands over paused on the destination did that before the pause began), and the start of the
 * destination.
 */
export interface PauseParts {
  finalSyncMs: number;
  switchoverMs: number;
  resumeMs: number;
  totalMs: number;
  /** The hypervisor's own count of its downtime, where it gives one (QEMU). */
  hypervisorMs?: number;
}

export interface MigrationProgress {
  migrationId: string;
  instanceId: string;
  source?: string;
  destination: string;
  phase: Phase;
  /** Current stream: `bulk`, `round-N`, `final` or `memory`. */
  stream?: string;
  /** The current or last disk stream (the same numbers as the flat fields below, kept for old clients). */
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  wireBytes: number;
  disk?: DiskStreamProgress;
  memory?: MemoryStreamProgress;
  round: number;
  projectedDowntimeMs?: number;
  pastPointOfNoReturn: boolean;
  cancelRequested: boolean;
  /** Set while the workflow holds at a breakpoint (options.holdAfter) after this phase. */
  heldAfter?: Phase;
  timeline: PhaseEvent[];
  /** The options this run resolved to (after validate). */
  options?: MigrationOptions;
  /** Finished streams, in order. */
  streams?: StreamRecord[];
  /** Throughput samples, at most MAX_SAMPLES (older ones thinned). */
  samples?: ProgressSample[];
  pause?: PauseParts;
  /** Why the run failed or rolled back. */
  error?: string;
}

export interface MigrationResult {
  migrationId: string;
  instanceId: string;
  source: string;
  destination: string;
  outcome: 'migrated' | 'rolled-back';
  reason?: string;
  totalMs: number;
  /** Wall time from pausing the source to resuming the destination. */
  downtimeMs: number;
  /** Downtime as the hypervisor reports it, where it does. */
  hypervisorDowntimeMs?: number;
  pause?: PauseParts;
  diskBytes: number;
  /** Disk bytes sent on the wire (all streams, compressed, headers included). */
  diskWireBytes: number;
  memoryBytes: number;
  rounds: number;
  diskIdentical?: boolean;
  /** With verifyDisk: per disk (by vdev), whether both sides' SHA-256 matched. */
  disksIdentical?: Record<string, boolean>;
  /** The options the run used, as resolved by the controller. */
  options?: MigrationOptions;
  streams?: StreamRecord[];
  timeline: PhaseEvent[];
}

/** How many throughput samples a run keeps in its state (every 2 s: over 30 minutes at full detail). */
export const MAX_SAMPLES = 1000;

/** Sent by node activities while they stream, so the `progress` query is live. */
export interface ProgressReport {
  /** Absent in reports from older workers: disk. */
  kind?: 'disk' | 'memory';
  stream: string;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  wireBytes: number;
  /** Memory reports only. */
  status?: string;
  remainingBytes?: number;
  dirtyPagesRate?: number;
  iteration?: number;
}

export const progressQuery = defineQuery<MigrationProgress>('progress');
export const progressSignal = defineSignal<[ProgressReport]>('reportProgress');
/** Releases a breakpoint set with options.holdAfter. */
export const proceedSignal = defineSignal<[Phase]>('proceed');
/** Cancel: rolls back before the point of no return, refused with a reason after it. */
export const cancelUpdate = defineUpdate<string, [string]>('cancelMigration');
