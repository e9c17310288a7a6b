import { describe, expect, it } from 'vitest';
import { projectFinalRoundBytes, projectFinalRoundMs } from '../../src/dataplane/projection.js';

describe('final round projection', () => {
  it('scales with the last round and the rate', () => {
    // 10 MiB at 10 MiB/s: about a second plus the stream overhead.
    expect(projectFinalRoundMs({ rateBytesPerSec: 10 * 2 ** 20, lastRoundBytes: 10 * 2 ** 20, overheadMs: 0 })).toBe(1000);
    expect(projectFinalRoundMs({ rateBytesPerSec: 1e6, lastRoundBytes: 0 })).toBe(100);
  });
  it('uses the dirty rate when given, and says never when the guest outruns the link', () => {
    expect(projectFinalRoundBytes({ rateBytesPerSec: 1e6, lastRoundBytes: 1e6, dirtyRateBytesPerSec: 1e5 })).toBe(1e5);
    expect(projectFinalRoundMs({ rateBytesPerSec: 1e6, lastRoundBytes: 1e6, dirtyRateBytesPerSec: 2e6 })).toBe(Infinity);
    expect(projectFinalRoundMs({ lastRoundBytes: 5e5, lastRoundMs: 500, overheadMs: 0 })).toBe(500);
    expect(projectFinalRoundMs({ lastRoundBytes: 5e5 })).toBe(Infinity);
  });
});
