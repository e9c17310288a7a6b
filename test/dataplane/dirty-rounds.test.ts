// Bulk copy while a writer keeps changing the source, then dirty rounds, then a final round with
// the writer stopped (the guest paused): the destination ends byte-identical.
import { afterAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { randomBytes, randomInt } from 'node:crypto';
import { sendStream } from '../../src/dataplane/sender.js';
import { openFileSource } from '../../src/dataplane/file-source.js';
import { FileDirtyTracker, writeTracked } from '../../src/dataplane/file-dirty-tracker.js';
import { projectFinalRoundMs } from '../../src/dataplane/projection.js';
import { totalLength } from '../../src/shared/extents.js';
import { killAllReceivers, makeMixedDisk, sha256OfFile, spawnReceiver, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  await killAllReceivers();
  for (const c of cleanups) await c();
});

describe('dirty rounds', () => {
  it('converge to a byte-identical destination', async () => {
    const dir = await tempDir();
    cleanups.push(dir.cleanup);
    const size = 32 * MiB + 4096;
    const srcPath = join(dir.path, 'src.img');
    await makeMixedDisk(srcPath, size);
    const rx = await spawnReceiver({
      host: '127.0.0.1', token: 'rounds', diskPath: join(dir.path, 'dst.img'), diskSize: size, tls: true, stateFile: join(dir.path, 'state.json'),
    });
    const tracker = new FileDirtyTracker(64 * 1024, size);
    await tracker.start();
    // The "guest": small writes at random places (some straddling the odd disk end) until stopped.
    let writing = true;
    let writes = 0;
    const guest = (async () => {
      while (writing) {
        const len = randomInt(1, 200_000);
        const off = randomInt(0, size - len);
        await writeTracked(srcPath, tracker, off, randomBytes(len));
        writes++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    const source = await openFileSource(srcPath);
    const options = { chunkSize: MiB, codec: 'lzo' as const, bandwidthBytesPerSec: 32 * MiB };
    try {
      const bulk = await sendStream({ endpoint: rx.endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options });
      let rate = (bulk.doneBytes / Math.max(1, bulk.elapsedMs)) * 1000;
      const roundBytes: number[] = [];
      for (let round = 1; round <= 3; round++) {
        const extents = await tracker.nextRound();
        const r = await sendStream({ endpoint: rx.endpoint, source, plan: { streamId: `round-${round}`, extents }, options });
        expect(r.doneBytes).toBe(totalLength(extents));
        roundBytes.push(r.doneBytes);
        if (r.elapsedMs > 0 && r.doneBytes > 0) rate = (r.doneBytes / r.elapsedMs) * 1000;
        expect(projectFinalRoundMs({ rateBytesPerSec: rate, lastRoundBytes: r.doneBytes, lastRoundMs: r.elapsedMs })).toBeGreaterThan(0);
      }
      expect(writes).toBeGreaterThan(0);
      expect(roundBytes.some((b) => b > 0)).toBe(true);
      // Pause the guest, then the final round.
      writing = false;
      await guest;
      const finalExtents = await tracker.nextRound();
      await tracker.stop();
      const fin = await sendStream({ endpoint: rx.endpoint, source, plan: { streamId: 'final', extents: finalExtents }, options });
      expect(fin.doneBytes).toBe(totalLength(finalExtents));
    } finally {
      writing = false;
      await guest;
      await source.close();
    }
    expect(await sha256OfFile(join(dir.path, 'dst.img'))).toBe(await sha256OfFile(srcPath));
  });
});
