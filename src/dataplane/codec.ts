// Chunk codecs. LZO is the paper's choice (fast, modest ratio); `none` is for links faster than
// the CPU can compress. The wire codec is per frame, so incompressible chunks travel raw.
import lzo from 'lzo';
import { FerryError, ErrorTypes } from '../shared/errors.js';
import type { Codec } from './types.js';

/** Codec byte on the wire. `zero` is a frame with no payload: the range reads as zeros. */
export const WireCodec = { none: 0, lzo: 1, zero: 2 } as const;
export type WireCodec = (typeof WireCodec)[keyof typeof WireCodec];

export function isWireCodec(n: number): n is WireCodec {
  return n === WireCodec.none || n === WireCodec.lzo || n === WireCodec.zero;
}

/** Worst-case LZO1X output for `n` input bytes (lzo's own bound, as the binding allocates it). */
export function lzoMaxCompressedSize(n: number): number {
  return n + Math.floor(n / 16) + 64 + 3;
}

/**
 * Compresses a chunk; returns the raw chunk with codec `none` when compression does not shrink
 * it (random or encrypted data), so the wire never carries more than the raw bytes plus a header.
 */
export function encodeChunk(raw: Buffer, codec: Codec): { wire: WireCodec; payload: Buffer } {
  if (codec === 'lzo') {
    const c = lzo.compress(raw);
    if (c.length < raw.length) return { wire: WireCodec.lzo, payload: c };
  }
  return { wire: WireCodec.none, payload: raw };
}

/**
 * Decodes a payload into exactly `length` bytes. LZO decompression writes into a buffer of the
 * declared size and fails on overrun, so a small hostile payload cannot expand past it (bomb).
 */
export function decodeChunk(wire: WireCodec, payload: Buffer, length: number): Buffer {
  switch (wire) {
    case WireCodec.none:
      if (payload.length !== length) {
        throw new FerryError(ErrorTypes.BadFrame, `raw frame payload is ${payload.length} bytes, header says ${length}`);
      }
      return payload;
    case WireCodec.lzo: {
      let out: Buffer;
      try {
        out = lzo.decompress(payload, length);
      } catch (err) {
        throw new FerryError(
          ErrorTypes.BadFrame,
          `LZO payload does not decompress into the declared ${length} bytes: ${(err as Error).message}`,
        );
      }
      if (out.length !== length) {
        throw new FerryError(ErrorTypes.BadFrame, `LZO payload decompressed to ${out.length} bytes, header says ${length}`);
      }
      return out;
    }
    case WireCodec.zero:
      if (payload.length !== 0) throw new FerryError(ErrorTypes.BadFrame, 'zero frame carries a payload');
      return Buffer.alloc(length);
  }
}
