// A raw disk image file as a BlockSource (tests, benches, and the destination-side digest).
import { open } from 'node:fs/promises';
import type { BlockSource } from './types.js';

export async function openFileSource(path: string): Promise<BlockSource> {
  const fh = await open(path, 'r');
  const { size } = await fh.stat();
  return {
    size,
    async read(offset: number, length: number): Promise<Buffer> {
      if (offset < 0 || length < 0 || offset + length > size) {
        throw new RangeError(`read [${offset}, ${offset + length}) outside ${path} (${size} bytes)`);
      }
      // A fresh, whole ArrayBuffer per read: the compression pool can transfer it without a copy.
      const buf = Buffer.allocUnsafeSlow(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new Error(`${path} ended early at ${offset + done}`);
        done += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}
