// The write tracker of a disk, by where it sits on the host.
import type { DiskTracker, TrackerContext } from './disk-tracker.js';
import { fileTracker } from './file-tracking.js';
import { lvTracker } from './lv-tracking.js';

export function trackerFor(c: TrackerContext): DiskTracker {
  return c.disk.kind === 'lv' ? lvTracker(c) : fileTracker(c);
}
