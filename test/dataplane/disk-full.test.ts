// A destination file system that fills up mid-stream: the sender gets DestinationDiskFull.
import { afterAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { sendStream } from '../../src/dataplane/sender.js';
import { openFileSource } from '../../src/dataplane/file-source.js';
import { killAllReceivers, spawnReceiver, tempDir } from './helpers.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const cleanups: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  await killAllReceivers();
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

describe('destination disk full', () => {
  it('fails with DestinationDiskFull and a clear message', async () => {
    const dir = await tempDir();
    cleanups.push(dir.cleanup);
    const mnt = join(dir.path, 'small-fs');
    await run('mkdir', ['-p', mnt]);
    await run('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'ferry-test-full', mnt]);
    cleanups.push(() => run('umount', ['-l', mnt]));
    const size = 24 * MiB;
    await writeFile(join(dir.path, 'src.img'), randomBytes(size)); // incompressible: must really take space
    const rx = await spawnReceiver({
      host: '127.0.0.1', token: 'full', diskPath: join(mnt, 'dst.img'), diskSize: size, tls: true, stateFile: join(dir.path, 'state.json'),
    });
    const source = await openFileSource(join(dir.path, 'src.img'));
    try {
      const err = await sendStream({
        endpoint: rx.endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options: { chunkSize: MiB, codec: 'lzo' },
      }).then(() => undefined, (e: unknown) => e);
      expect(err).toMatchObject({ type: 'DestinationDiskFull', message: expect.stringMatching(/file system is full/) });
    } finally {
      await source.close();
    }
    const refused = await rx.waitFor((e) => e.event === 'refused');
    expect(refused).toMatchObject({ type: 'DestinationDiskFull' });
  });
});
