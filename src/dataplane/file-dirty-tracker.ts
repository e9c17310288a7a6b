// A DirtyTracker for tests and benches without a hypervisor: whoever writes the disk file
// reports the ranges here (writeTracked does both), rounded out to the tracking granularity.
import { open } from 'node:fs/promises';
import { normalizeExtents, type Extent } from '../shared/extents.js';
import type { DirtyTracker } from './types.js';

export class FileDirtyTracker implements DirtyTracker {
  private current: Extent[] = [];
  private recording = false;

  /** `granularity` bytes per bitmap bit, like QEMU's dirty bitmaps (64 KiB by default). */
  constructor(readonly granularity = 64 * 1024, readonly diskSize = Infinity) {}

  async start(): Promise<void> {
    this.current = [];
    this.recording = true;
  }

  record(offset: number, length: number): void {
    if (!this.recording || length <= 0) return;
    const start = Math.floor(offset / this.granularity) * this.granularity;
    // Rounded out to whole blocks, clipped at the disk end (the last block may be short).
    const end = Math.min(this.diskSize, Math.ceil((offset + length) / this.granularity) * this.granularity);
    this.current.push({ offset: start, length: end - start });
  }

  async nextRound(): Promise<Extent[]> {
    // Synchronous swap: no write can land between freezing this round and starting the next.
    const frozen = this.current;
    this.current = [];
    return normalizeExtents(frozen);
  }

  async stop(): Promise<void> {
    this.recording = false;
    this.current = [];
  }
}

/**
 * Writes `data` at `offset` of the disk file and records it, as a guest's block layer would.
 */
export async function writeTracked(path: string, tracker: FileDirtyTracker, offset: number, data: Buffer): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
  // Recorded after the write lands: a round frozen in between resends it in the next one.
  tracker.record(offset, data.length);
}
