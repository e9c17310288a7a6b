// SHA-256 of a whole BlockSource: proves the destination disk is byte-identical to the source.
import { createHash } from 'node:crypto';
import type { BlockSource } from './types.js';

const STEP = 4 * 1024 * 1024;

export async function sha256OfSource(source: BlockSource): Promise<string> {
  const h = createHash('sha256');
  for (let off = 0; off < source.size; off += STEP) {
    h.update(await source.read(off, Math.min(STEP, source.size - off)));
  }
  return h.digest('hex');
}
