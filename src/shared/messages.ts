// Workflow messages (query, signal, update) and the workflow's input and result shapes, shared by
// the workflow, the activities, the CLI and the tests.
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { MigrationOptions } from './options.js';
import type { Phase } from './names.js';

export interface MigrateInput {
  instanceId: string;
  destination: string;
  options?: Partial<MigrationOptions>;
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

export interface MigrationProgress {
  migrationId: string;
  instanceId: string;
  source?: string;
  destination: string;
  phase: Phase;
  /** Current stream: `bulk`, `round-N`, `final` or `memory`. */
  stream?: string;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  wireBytes: number;
  round: number;
  projectedDowntimeMs?: number;
  pastPointOfNoReturn: boolean;
  cancelRequested: boolean;
  /** Set while the workflow holds at a breakpoint (options.holdAfter) after this phase. */
  heldAfter?: Phase;
  timeline: PhaseEvent[];
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
  diskBytes: number;
  /** Disk bytes sent on the wire (all streams, compressed, headers included). */
  diskWireBytes: number;
  memoryBytes: number;
  rounds: number;
  diskIdentical?: boolean;
  /** With verifyDisk: per disk (by vdev), whether both sides' SHA-256 matched. */
  disksIdentical?: Record<string, boolean>;
  timeline: PhaseEvent[];
}

/** Sent by node activities while they stream, so the `progress` query is live. */
export interface ProgressReport {
  stream: string;
  bytesDone: number;
  bytesTotal: number;
  rateBytesPerSec: number;
  wireBytes: number;
}

export const progressQuery = defineQuery<MigrationProgress>('progress');
export const progressSignal = defineSignal<[ProgressReport]>('reportProgress');
/** Releases a breakpoint set with options.holdAfter. */
export const proceedSignal = defineSignal<[Phase]>('proceed');
/** Cancel: rolls back before the point of no return, refused with a reason after it. */
export const cancelUpdate = defineUpdate<string, [string]>('cancelMigration');
