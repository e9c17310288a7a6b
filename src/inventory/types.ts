// Records the inventory hands out. Plain data: they cross Temporal activity boundaries as JSON.
import type { HypervisorKind, InstanceSpec } from '../shared/instance.js';
import type { Phase } from '../shared/names.js';

export type NodeState = 'up' | 'down' | 'drain';
export type InstanceState = 'running' | 'migrating' | 'stopped';
export type MigrationOutcome = 'succeeded' | 'rolled-back' | 'failed' | 'cancelled';

export interface Resources {
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
}

export interface NodeRecord {
  name: string;
  hypervisor: HypervisorKind;
  controlAddress: string;
  dataAddress: string;
  state: NodeState;
  capacity: Resources;
  extra: Record<string, unknown>;
}

export interface InstanceRecord {
  id: string;
  host: string;
  state: InstanceState;
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
  spec: InstanceSpec;
}

export interface ReservationRecord {
  migrationId: string;
  instanceId: string;
  node: string;
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
  createdAt: string;
  /** null while the reservation holds capacity. */
  releasedAt: string | null;
}

export interface MigrationEvent {
  seq: number;
  phase: Phase;
  detail: unknown;
  at: string;
}

export interface MigrationRecord {
  migrationId: string;
  instanceId: string | null;
  source: string | null;
  destination: string | null;
  startedAt: string;
  committedAt: string | null;
  finishedAt: string | null;
  outcome: MigrationOutcome | null;
  summary: unknown;
  events: MigrationEvent[];
}

export interface ConsistencyViolation {
  kind:
    | 'over-capacity'
    | 'instance-on-unknown-node'
    | 'hypervisor-mismatch'
    | 'reservation-unknown-node'
    | 'reservation-unknown-instance'
    | 'reservation-live-after-commit'
    | 'reservation-live-after-finish'
    | 'migrating-without-reservation';
  /** The node, instance or migration the violation is about. */
  subject: string;
  message: string;
}
