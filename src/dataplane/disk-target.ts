// Destination disks as DiskTargets: a local raw file (QEMU nodes, a Xen worker inside dom0), and the
// view of one as a BlockSource for the destination-side digest.
import { open } from 'node:fs/promises';
import type { BlockSource, DiskTarget } from './types.js';

/** Opens (creating if needed, never truncating) a local raw disk file for positioned writes. */
export async function openLocalDiskTarget(path: string): Promise<DiskTarget> {
  // 'a+' creates without truncating; positioned writes need 'r+', so reopen.
  await (await open(path, 'a+')).close();
  return openLocalFile(path, 'r+');
}

/** An existing local file, read (and with `r+` written) at positions; reads stop short at its end. */
export async function openLocalFile(path: string, mode: 'r' | 'r+'): Promise<DiskTarget> {
  const fh = await open(path, mode);
  return {
    size: async () => (await fh.stat()).size,
    truncate: (size) => fh.truncate(size),
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      return buf.subarray(0, done);
    },
    async write(offset, data) {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    },
    datasync: () => fh.datasync(),
    close: () => fh.close(),
  };
}

/** Reads a DiskTarget of known size as a BlockSource (whole, exact reads). */
export function targetAsSource(target: DiskTarget, size: number): BlockSource {
  return {
    size,
    async read(offset, length) {
      const buf = await target.read(offset, length);
      if (buf.length !== length) throw new Error(`destination disk ended early at ${offset + buf.length}`);
      return buf;
    },
    close: () => target.close(),
  };
}
