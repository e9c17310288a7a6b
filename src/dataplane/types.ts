// Contracts of the data plane: what the node activities hand the sender and the receiver.
// Disk bytes flow only through these sockets, never through Temporal.
import type { Extent } from '../shared/extents.js';

export type Codec = 'lzo' | 'none';
export const CODECS: readonly Codec[] = ['lzo', 'none'];

/** Where a live or stopped disk is read from (a raw file, QEMU's NBD export, a Xen dom0 device). */
export interface BlockSource {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Ranges known to read as zeros, found without reading them (NBD `base:allocation`): the sender
   * sends those chunks as zero frames unread. Optional; a write after the call is the dirty
   * bitmap's business, as for every byte the stream reads.
   */
  zeroExtents?(): Promise<Extent[]>;
  close(): Promise<void>;
}

/** What the destination tells the source, through the workflow: no disk bytes, only an address. */
export interface ReceiverEndpoint {
  host: string;
  port: number;
  /** Per-migration secret; the receiver refuses any connection without it. */
  token: string;
  /** PEM certificate the sender pins (the receiver's self-signed one); absent = plain TCP. */
  certPem?: string;
}

/** One stream is one pass over a set of extents: `bulk`, `round-1`, ..., `final`. */
export interface StreamPlan {
  streamId: string;
  extents: Extent[];
  /** Resume: skip everything below this disk offset (the last acknowledged one). */
  startOffset?: number;
}

export interface TransferOptions {
  chunkSize: number;
  codec: Codec;
  /** Bytes per second on the wire; 0 or absent = unlimited. */
  bandwidthBytesPerSec?: number;
  /** Compression worker threads; default: number of CPUs. */
  workers?: number;
}

export interface TransferProgress {
  streamId: string;
  /** Highest disk offset below which every planned byte is durably written at the destination. */
  ackedOffset: number;
  /** Planned bytes acknowledged (logical, uncompressed). */
  doneBytes: number;
  totalBytes: number;
  /** Bytes sent on the socket, frames and headers included. */
  wireBytes: number;
  /** Logical bytes that travelled as zero frames (no payload). */
  zeroBytes: number;
  elapsedMs: number;
}

/** Records which blocks a guest writes; each round is frozen and a new one starts atomically. */
export interface DirtyTracker {
  start(): Promise<void>;
  /** Freezes the current round and returns its extents; the next round is already recording. */
  nextRound(): Promise<Extent[]>;
  stop(): Promise<void>;
}

/**
 * The destination disk the receiver writes: a local file, or a file on a Xen host reached through
 * the driver's executor. `datasync` must make every completed write durable (the receiver
 * acknowledges only after it).
 */
export interface DiskTarget {
  size(): Promise<number>;
  truncate(size: number): Promise<void>;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer): Promise<void>;
  datasync(): Promise<void>;
  close(): Promise<void>;
}
