// Write tracking under one disk of a running Xen guest, inserted and removed without a restart.
// One kind per way a disk can sit on its host: an LVM logical volume (era swapped in under the
// LV's own device, lv-tracking.ts) or an image file behind a loop device (blktrace on the loop,
// file-tracking.ts). Each keeps its state in a file on the host, so a restarted worker goes on.
import type { Extent } from '../../shared/extents.js';
import type { DiskSpec } from '../../shared/instance.js';
import type { Executor } from './executor.js';

export interface DiskTracker {
  /** Why this disk cannot be tracked on this host, in words for the operator; null when it can. */
  refusal(): Promise<string | null>;
  /** Starts recording writes. Idempotent. */
  start(): Promise<void>;
  /**
   * Round `n` (from 1): the extents written since round `n - 1` (or since start), or more. Asked
   * again for the same `n` (a retry), it answers at least as much as the first time. `final`: the
   * guest no longer runs on this host, so nothing writes any more and the tracker may drain what it
   * buffers.
   */
  round(n: number, final: boolean): Promise<Extent[]>;
  /** The path the data plane reads the live disk from. */
  readPath(): Promise<string>;
  /** Removes the tracking and puts the disk back as it was. Idempotent. */
  stop(): Promise<void>;
}

export interface TrackerContext {
  ex: Executor;
  /** The instance's state folder on the host. */
  dir: string;
  id: string;
  disk: DiskSpec;
}

/** State files are written then renamed: a crash never leaves half a state file. */
export async function writeState(ex: Executor, path: string, value: unknown): Promise<void> {
  await ex.writeFile(`${path}.tmp`, JSON.stringify(value));
  const r = await ex.run('mv', ['-f', `${path}.tmp`, path]);
  if (r.code !== 0) throw new Error(`mv ${path}.tmp ${path} on ${ex.where}: ${r.stderr.trim()}`);
}

export async function readState<T>(ex: Executor, path: string): Promise<T | null> {
  const r = await ex.run('cat', [path]);
  if (r.code !== 0) return null;
  return JSON.parse(r.stdout) as T;
}
