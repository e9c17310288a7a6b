// The hypervisor driver interface reads like the migration phases it serves. Node activities call
// it on the host it belongs to; it keeps no state in memory that a worker restart would lose
// (QEMU processes, bitmaps and domains live on the host and are found again by name).
import type { Extent } from '../shared/extents.js';
import type { BlockSource, DiskTarget } from '../dataplane/types.js';

export type HypervisorKind = 'qemu' | 'xen';

export interface InstanceSpec {
  id: string;
  hypervisor: HypervisorKind;
  vcpus: number;
  memoryMiB: number;
  diskBytes: number;
  /** Disk image path on its host (raw). */
  diskPath: string;
  /** Guest boot: direct kernel boot (qemu) or the domain's config (xen). */
  boot?: { kernel: string; initrd?: string; append?: string };
  /** xen: pv, pvh or hvm. */
  guestType?: 'pv' | 'pvh' | 'hvm';
  /** Host port forwarded to the guest's request port on the node's lab address (qemu lab). */
  servicePort?: number;
  /** Free-form driver settings. */
  extra?: Record<string, unknown>;
}

export type RuntimeState = 'running' | 'paused' | 'incoming' | 'stopped' | 'absent';

export interface MemoryProgress {
  status: string;
  transferredBytes: number;
  remainingBytes: number;
  totalBytes: number;
  dirtyPagesRate?: number;
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

  /** What the host says about the instance right now. */
  state(spec: InstanceSpec): Promise<RuntimeState>;
  /** Boots an instance (labs and `ferry instance start`). Idempotent. */
  start(spec: InstanceSpec): Promise<void>;
  /** Throws a FerryError if this instance cannot be live-migrated from/to this host. */
  checkMigratable(spec: InstanceSpec): Promise<void>;

  // --- destination side ---
  /** Creates the disk (same size, raw) and an instance waiting for memory, paused. Idempotent. */
  prepareDestination(spec: InstanceSpec, opts: { listenHost: string }): Promise<{ memoryUri: string }>;
  /** Path of the disk on the destination host (what the inventory records). */
  destinationDiskPath(spec: InstanceSpec): string;
  /** Free bytes where the destination disk will live (creating its folder if needed). */
  destinationFreeBytes(spec: InstanceSpec): Promise<number>;
  /** Opens the destination disk for the data plane's receiver (created by prepareDestination). */
  openDestinationDisk(spec: InstanceSpec): Promise<DiskTarget>;
  /** After the switchover: runs the instance. Idempotent. */
  resume(spec: InstanceSpec): Promise<void>;
  /** Rollback: removes the destination instance and its disk. Idempotent. */
  abortDestination(spec: InstanceSpec): Promise<void>;

  // --- source side ---
  startDirtyTracking(spec: InstanceSpec): Promise<void>;
  /** Freezes round `round` and starts `round + 1`; idempotent for the same `round`. */
  takeDirtyRound(spec: InstanceSpec, round: number): Promise<Extent[]>;
  /**
   * SHA-256 (hex) of the source or destination disk computed on its host, when the driver can do
   * that faster than reading it through openDisk (Xen over SSH). Optional.
   */
  digestDisk?(spec: InstanceSpec, side: 'source' | 'destination'): Promise<string>;
  /** Opens the live disk for reading. */
  openDisk(spec: InstanceSpec): Promise<BlockSource>;
  stopDirtyTracking(spec: InstanceSpec): Promise<void>;
  /** Memory pre-copy; resolves once the source is paused and ready for the final disk sync. */
  migrateMemory(
    spec: InstanceSpec,
    memoryUri: string,
    opts: { downtimeMs: number; bandwidthBytesPerSec?: number; onProgress?: (p: MemoryProgress) => void },
  ): Promise<void>;
  /** The point of no return: completes the memory migration; the source stops for good. */
  switchover(spec: InstanceSpec): Promise<MemoryResult>;
  /** Rollback before the switchover: cancels memory migration, resumes the source if paused. */
  cancelMigration(spec: InstanceSpec): Promise<void>;
  /** After commit: removes the source instance, its disk and its tracking state. Idempotent. */
  retire(spec: InstanceSpec): Promise<void>;
}
