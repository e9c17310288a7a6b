// The hypervisor driver interface reads like the migration phases it serves. Node activities call
// it on the host it belongs to; it keeps no state in memory that a worker restart would lose
// (QEMU processes, bitmaps and domains live on the host and are found again by name).
import type { Extent } from '../shared/extents.js';
import type { BlockSource, DiskTarget } from '../dataplane/types.js';
import type { DiskSpec, HypervisorKind, InstanceSpec } from '../shared/instance.js';

export type { HypervisorKind, InstanceSpec, DiskSpec, NicSpec } from '../shared/instance.js';

/**
 * How the hypervisor hands a guest over: the workflow branches on this, never on a hypervisor name.
 * - `pause-before-switchover` (QEMU): `migrateMemory` ends with the source paused and its disks
 *   still readable; the final disk sync runs before the point of no return, `switchover` completes
 *   the memory migration, `resume` runs the destination.
 * - `paused-on-destination` (`xl migrate -p`): `migrateMemory` itself hands the guest over, paused
 *   on the destination; its success IS the point of no return, the final sync rolls forward, and
 *   `resume` unpauses the destination.
 */
export type Handover = 'pause-before-switchover' | 'paused-on-destination';

/** What `ferry node sync` learns from a host: the guests it can move, and why it cannot move others. */
export interface Discovery {
  instances: InstanceSpec[];
  refused: { name: string; reason: string }[];
}

export type RuntimeState = 'running' | 'paused' | 'incoming' | 'stopped' | 'absent';

export interface MemoryProgress {
  status: string;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  dirtyPagesRate?: number;
  /** Pre-copy passes over memory so far (QEMU dirty-sync-count). */
  iteration?: number;
  /** The hypervisor's own throughput figure, where it gives one (QEMU mbps). */
  rateBytesPerSec?: number;
}

export interface MemoryResult {
  totalMs: number;
  downtimeMs?: number;
  transferredBytes: number;
  /** Anything the operator should know about how the handover went (kept in the timeline). */
  note?: string;
}

export interface HypervisorDriver {
  readonly kind: HypervisorKind;
  readonly handover: Handover;

  /** What the host says about the instance right now. */
  state(spec: InstanceSpec): Promise<RuntimeState>;
  /** Boots one of the labs' own guests. Operators' guests are never booted by Ferry. */
  start?(spec: InstanceSpec): Promise<void>;
  /** The guests this host runs, described from what the hypervisor says (`ferry node sync`). */
  discover?(): Promise<Discovery>;
  /** Throws a FerryError if this instance cannot be live-migrated from/to this host. */
  checkMigratable(spec: InstanceSpec): Promise<void>;

  // --- destination side ---
  /**
   * Everything the guest needs here, checked before any side effect: room for every disk where it
   * will live, and the paths its config names (kernel, volume group, bridge). Throws a FerryError.
   */
  checkDestination(spec: InstanceSpec): Promise<void>;
  /** The guest's disks as they will be on this host (what the inventory records at commit). */
  destinationDisks(spec: InstanceSpec): DiskSpec[];
  /** Creates every disk (same size, raw) and an instance waiting for memory. Idempotent. */
  prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }>;
  /** Opens one destination disk for the data plane's receiver (created by prepareDestination). */
  openDestinationDisk(spec: InstanceSpec, vdev: string): Promise<DiskTarget>;
  /** After the handover: runs the instance. Idempotent. */
  resume(spec: InstanceSpec): Promise<void>;
  /** Rollback: removes the destination instance and its disks. Idempotent. */
  abortDestination(spec: InstanceSpec): Promise<void>;

  // --- source side ---
  /** Starts recording writes to every disk, under the running guest. Idempotent. */
  startDirtyTracking(spec: InstanceSpec): Promise<void>;
  /** Freezes round `round` and starts `round + 1`, for every disk (keyed by vdev); idempotent per round. */
  takeDirtyRound(spec: InstanceSpec, round: number): Promise<Record<string, Extent[]>>;
  /**
   * SHA-256 (hex) of one source or destination disk computed on its host, when the driver can do
   * that faster than reading it through openDisk (Xen over SSH). Optional.
   */
  digestDisk?(spec: InstanceSpec, side: 'source' | 'destination', vdev: string): Promise<string>;
  /** Opens one live disk for reading. */
  openDisk(spec: InstanceSpec, vdev: string): Promise<BlockSource>;
  /** Removes the write tracking and puts every disk back as it was. Idempotent. */
  stopDirtyTracking(spec: InstanceSpec): Promise<void>;
  /** Memory pre-copy; resolves at the handover point of this driver's `handover`. */
  migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: {
      downtimeMs: number;
      bandwidthBytesPerSec?: number;
      /** The guest's disks on the destination (paths may differ from the source's). */
      destinationDisks: DiskSpec[];
      onProgress?: (p: MemoryProgress) => void;
    },
  ): Promise<void>;
  /** Completes the memory migration; the source stops for good. */
  switchover(spec: InstanceSpec): Promise<MemoryResult>;
  /** Rollback before the handover: cancels memory migration, resumes the source if paused. */
  cancelMigration(spec: InstanceSpec): Promise<void>;
  /**
   * After commit: removes the source instance, its tracking state and its disks (or, with
   * `keepDisks`, renames them aside). Idempotent.
   */
  retire(spec: InstanceSpec, opts?: { keepDisks?: boolean }): Promise<void>;
}
