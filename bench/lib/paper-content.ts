// How compressible the benchmark disk is: the fraction of all-zero chunks (which Ferry sends as
// payload-less frames and QEMU's mirror as write-zeroes) and the LZO ratio of the rest, measured
// with the same codec and chunk size as Ferry's data plane.
import lzo from 'lzo';
import { openFileSource } from '../../src/dataplane/file-source.js';

const CHUNK = 1024 * 1024;

export interface DiskContent {
  sizeBytes: number;
  zeroBytes: number;
  zeroFraction: number;
  nonZeroBytes: number;
  lzoBytes: number;
  /** non-zero bytes / their LZO size */
  lzoRatioNonZero: number;
  /** whole disk / LZO size of the non-zero part */
  lzoRatioWholeDisk: number;
}

export async function measureDiskContent(path: string): Promise<DiskContent> {
  const src = await openFileSource(path);
  const zeros = Buffer.alloc(CHUNK);
  let zero = 0;
  let nonZero = 0;
  let packed = 0;
  try {
    for (let off = 0; off < src.size; off += CHUNK) {
      const b = await src.read(off, Math.min(CHUNK, src.size - off));
      if (b.equals(zeros.subarray(0, b.length))) {
        zero += b.length;
        continue;
      }
      nonZero += b.length;
      // Incompressible chunks travel raw, so never count more than the chunk itself.
      packed += Math.min(b.length, lzo.compress(b).length);
    }
  } finally {
    await src.close();
  }
  return {
    sizeBytes: src.size,
    zeroBytes: zero,
    zeroFraction: +(zero / src.size).toFixed(3),
    nonZeroBytes: nonZero,
    lzoBytes: packed,
    lzoRatioNonZero: packed ? +(nonZero / packed).toFixed(2) : 0,
    lzoRatioWholeDisk: packed ? +(src.size / packed).toFixed(2) : 0,
  };
}
