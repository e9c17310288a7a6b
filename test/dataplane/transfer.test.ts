// End to end over real sockets: sender here, receiver in another process.
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { sendStream } from '../../src/dataplane/sender.js';
import { openFileSource } from '../../src/dataplane/file-source.js';
import { FerryError } from '../../src/shared/errors.js';
import type { TransferProgress } from '../../src/dataplane/types.js';
import { killAllReceivers, makeMixedDisk, sha256OfFile, spawnReceiver, tempDir } from './helpers.js';

const MiB = 1024 * 1024;
const dirs: (() => Promise<void>)[] = [];
afterEach(killAllReceivers);
afterAll(async () => {
  for (const c of dirs) await c();
});

async function workspace() {
  const d = await tempDir();
  dirs.push(d.cleanup);
  return d.path;
}

describe('disk stream', () => {
  it('copies a disk with random, text and zero regions byte-identically over TLS', async () => {
    const dir = await workspace();
    const size = 24 * MiB + 12345; // odd tail: the last chunk is short
    await makeMixedDisk(join(dir, 'src.img'), size);
    const rx = await spawnReceiver({
      host: '127.0.0.1', port: 0, token: 'sekret-1', diskPath: join(dir, 'dst.img'), diskSize: size, tls: true, stateFile: join(dir, 'state.json'),
    });
    expect(rx.endpoint.certPem).toContain('BEGIN CERTIFICATE');
    const source = await openFileSource(join(dir, 'src.img'));
    let result: TransferProgress;
    try {
      result = await sendStream({
        endpoint: rx.endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options: { chunkSize: MiB, codec: 'lzo' },
      });
    } finally {
      await source.close();
    }
    expect(await sha256OfFile(join(dir, 'dst.img'))).toBe(await sha256OfFile(join(dir, 'src.img')));
    expect(result.ackedOffset).toBe(size);
    expect(result.doneBytes).toBe(size);
    // A third of the disk is zeros (no payload) and a third text (LZO shrinks it): the wire carries far less.
    expect(result.zeroBytes).toBeGreaterThanOrEqual(8 * MiB - 1);
    expect(result.wireBytes).toBeLessThan(size * 0.5);
    const state = JSON.parse(await readFile(join(dir, 'state.json'), 'utf8'));
    expect(state.streams.bulk).toEqual({ ackedOffset: size, done: true });
  });

  it('sends what the source knows is zero as zero frames without reading it, and the copy is still byte-identical', async () => {
    const dir = await workspace();
    const size = 12 * MiB;
    await makeMixedDisk(join(dir, 'src.img'), size); // every third MiB a hole: 2-3, 5-6, 8-9, 11-12
    const rx = await spawnReceiver({ host: '127.0.0.1', port: 0, token: 'sekret-z', diskPath: join(dir, 'dst.img'), diskSize: size, tls: true, stateFile: join(dir, 'state.json') });
    const file = await openFileSource(join(dir, 'src.img'));
    const holes = [2, 5, 8, 11].map((m) => ({ offset: m * MiB, length: MiB }));
    const reads: number[] = [];
    // The file source plus what NBD base:allocation would say about it; reading a hole is a bug now.
    const source = {
      size: file.size,
      zeroExtents: async () => holes,
      read: (offset: number, length: number) => {
        reads.push(offset);
        if (holes.some((h) => offset >= h.offset && offset < h.offset + h.length)) throw new Error(`read of a known zero range at ${offset}`);
        return file.read(offset, length);
      },
      close: () => file.close(),
    };
    let result: TransferProgress;
    try {
      result = await sendStream({ endpoint: rx.endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options: { chunkSize: MiB, codec: 'lzo' } });
    } finally {
      await source.close();
    }
    expect(await sha256OfFile(join(dir, 'dst.img'))).toBe(await sha256OfFile(join(dir, 'src.img')));
    expect(reads).toHaveLength(8);
    expect(result.zeroBytes).toBe(4 * MiB);
  });

  it('refuses a sender that pins a different certificate', async () => {
    const dir = await workspace();
    const size = 2 * MiB;
    await makeMixedDisk(join(dir, 'src.img'), size);
    const a = await spawnReceiver({ host: '127.0.0.1', token: 't', diskPath: join(dir, 'a.img'), diskSize: size, tls: true, stateFile: join(dir, 'a.json') });
    const b = await spawnReceiver({ host: '127.0.0.1', token: 't', diskPath: join(dir, 'b.img'), diskSize: size, tls: true, stateFile: join(dir, 'b.json') });
    const source = await openFileSource(join(dir, 'src.img'));
    try {
      await expect(
        sendStream({ endpoint: { ...a.endpoint, certPem: b.endpoint.certPem }, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options: { chunkSize: MiB, codec: 'lzo' } }),
      ).rejects.toThrow(/not the pinned|certificate/);
    } finally {
      await source.close();
    }
    expect(a.events.filter((e) => e.event === 'stream-start')).toHaveLength(0);
  });

  it('resumes from the acknowledged offset after the receiver process is killed', async () => {
    const dir = await workspace();
    const size = 48 * MiB;
    await makeMixedDisk(join(dir, 'src.img'), size);
    const common = { host: '127.0.0.1', token: 'resume-token', diskPath: join(dir, 'dst.img'), diskSize: size, tls: true, stateFile: join(dir, 'state.json'), syncEveryBytes: 4 * MiB };
    const rx1 = await spawnReceiver(common);
    const source = await openFileSource(join(dir, 'src.img'));
    try {
      const plan = { streamId: 'bulk', extents: [{ offset: 0, length: size }] };
      // Capped so the kill lands mid-stream; the cap is a means here, not an assertion on speed.
      const options = { chunkSize: MiB, codec: 'lzo' as const, bandwidthBytesPerSec: 8 * MiB };
      let killed = false;
      const first = sendStream({
        endpoint: rx1.endpoint, source, plan, options,
        onProgress: (p) => {
          if (!killed && p.ackedOffset >= 12 * MiB) {
            killed = true;
            void rx1.kill('SIGKILL');
          }
        },
      });
      await expect(first).rejects.toThrow();
      expect(killed).toBe(true);

      const rx2 = await spawnReceiver(common);
      const resumed: TransferProgress[] = [];
      const result = await sendStream({ endpoint: rx2.endpoint, source, plan, options: { chunkSize: MiB, codec: 'lzo' }, onProgress: (p) => resumed.push(p) });
      const start = (await rx2.waitFor((e) => e.event === 'stream-start')) as { resumeOffset: number };
      const end = (await rx2.waitFor((e) => e.event === 'stream-end')) as { bytesWritten: number };
      expect(start.resumeOffset).toBeGreaterThanOrEqual(12 * MiB);
      expect(resumed[0].ackedOffset).toBe(start.resumeOffset);
      // Only the part after the acknowledged offset was written again (zero regions are not written at all).
      expect(end.bytesWritten).toBeLessThanOrEqual(size - start.resumeOffset);
      expect(end.bytesWritten).toBeLessThan(size);
      expect(result.ackedOffset).toBe(size);
    } finally {
      await source.close();
    }
    expect(await sha256OfFile(join(dir, 'dst.img'))).toBe(await sha256OfFile(join(dir, 'src.img')));
  });

  it('rejects bad input before connecting', async () => {
    const dir = await workspace();
    await makeMixedDisk(join(dir, 'src.img'), MiB);
    const source = await openFileSource(join(dir, 'src.img'));
    const endpoint = { host: '127.0.0.1', port: 1, token: 'x' };
    try {
      await expect(sendStream({ endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: 2 * MiB }] }, options: { chunkSize: MiB, codec: 'lzo' } }))
        .rejects.toMatchObject({ type: 'BadInput' });
      await expect(sendStream({ endpoint, source, plan: { streamId: 'bulk', extents: [] }, options: { chunkSize: 0, codec: 'lzo' } }))
        .rejects.toBeInstanceOf(FerryError);
    } finally {
      await source.close();
    }
  });
});
