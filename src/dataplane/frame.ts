// Wire format of one disk stream (sender -> receiver), and the receiver's replies.
//
//   sender:   MAGIC | u32 helloLen | hello JSON       then frames, then an END frame
//   frame:    u8 kind | u8 codec | u16 0 | u32 length | u64 offset | u32 crc32c(raw) | u32 payloadLen | payload
//   receiver: u8 kind | ... (ACCEPT / ACK carry a u64 offset; ERROR carries a JSON {type, message})
//
// All integers are big-endian. Every field is checked here, before any byte reaches the disk.
import { z } from 'zod';
import { FerryError, ErrorTypes, type ErrorType } from '../shared/errors.js';
import { isWireCodec, lzoMaxCompressedSize, WireCodec } from './codec.js';

export const MAGIC = Buffer.from('FERRYDP1', 'ascii');
export const MAX_HELLO_BYTES = 4096;
export const FRAME_HEADER_BYTES = 24;
/** Largest chunk any receiver accepts, whatever the hello says (bounds its memory per frame). */
export const MAX_CHUNK_SIZE = 64 * 1024 * 1024;

export const FrameKind = { data: 1, end: 2 } as const;
export const ReplyKind = { accept: 1, ack: 2, done: 3, error: 4 } as const;

export const HelloSchema = z.object({
  token: z.string().min(1).max(512),
  streamId: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/),
  startOffset: z.number().int().min(0),
  diskSize: z.number().int().min(0),
  chunkSize: z.number().int().min(1).max(MAX_CHUNK_SIZE),
});
export type Hello = z.infer<typeof HelloSchema>;

export function encodeHello(h: Hello): Buffer {
  const json = Buffer.from(JSON.stringify(h), 'utf8');
  const len = Buffer.alloc(4);
  len.writeUInt32BE(json.length);
  return Buffer.concat([MAGIC, len, json]);
}

export interface FrameHeader {
  kind: number;
  codec: WireCodec;
  length: number;
  offset: number;
  crc: number;
  payloadLength: number;
}

export function encodeFrameHeader(h: FrameHeader): Buffer {
  const b = Buffer.alloc(FRAME_HEADER_BYTES);
  b.writeUInt8(h.kind, 0);
  b.writeUInt8(h.codec, 1);
  b.writeUInt32BE(h.length, 4);
  b.writeBigUInt64BE(BigInt(h.offset), 8);
  b.writeUInt32BE(h.crc >>> 0, 16);
  b.writeUInt32BE(h.payloadLength, 20);
  return b;
}

export function endFrame(): Buffer {
  return encodeFrameHeader({ kind: FrameKind.end, codec: WireCodec.none, length: 0, offset: 0, crc: 0, payloadLength: 0 });
}

function bad(message: string): FerryError {
  return new FerryError(ErrorTypes.BadFrame, message);
}

/** Limits a frame is checked against: the disk, the negotiated chunk size, the stream's order. */
export interface FrameLimits {
  diskSize: number;
  chunkSize: number;
  /** Frames come in increasing offset order: none may start below the end of the previous one. */
  minOffset: number;
}

/** Parses and bounds-checks a header; throws BadFrame on anything a correct sender never sends. */
export function decodeFrameHeader(b: Buffer, limits: FrameLimits): FrameHeader {
  const kind = b.readUInt8(0);
  const codec = b.readUInt8(1);
  if (b.readUInt16BE(2) !== 0) throw bad('reserved header bits are set');
  const length = b.readUInt32BE(4);
  const offset64 = b.readBigUInt64BE(8);
  const crc = b.readUInt32BE(16);
  const payloadLength = b.readUInt32BE(20);
  if (kind === FrameKind.end) {
    if (length !== 0 || offset64 !== 0n || payloadLength !== 0) throw bad('end frame carries data');
    return { kind, codec: WireCodec.none, length: 0, offset: 0, crc: 0, payloadLength: 0 };
  }
  if (kind !== FrameKind.data) throw bad(`unknown frame kind ${kind}`);
  if (!isWireCodec(codec)) throw bad(`unknown codec ${codec}`);
  if (length === 0) throw bad('empty data frame');
  if (length > limits.chunkSize) throw bad(`frame of ${length} bytes exceeds the chunk size ${limits.chunkSize}`);
  if (offset64 > BigInt(limits.diskSize)) throw bad(`frame offset ${offset64} is past the disk end ${limits.diskSize}`);
  const offset = Number(offset64);
  if (offset + length > limits.diskSize) {
    throw bad(`frame [${offset}, ${offset + length}) runs past the disk end ${limits.diskSize}`);
  }
  if (offset < limits.minOffset) {
    throw bad(`frame offset ${offset} goes backwards (previous frame ended at ${limits.minOffset})`);
  }
  const maxPayload =
    codec === WireCodec.zero ? 0 : codec === WireCodec.none ? length : lzoMaxCompressedSize(length);
  if (codec === WireCodec.none && payloadLength !== length) {
    throw bad(`raw frame payload is ${payloadLength} bytes, header says ${length}`);
  }
  if (payloadLength > maxPayload) {
    throw bad(`payload of ${payloadLength} bytes exceeds the ${maxPayload} allowed for a ${length}-byte frame`);
  }
  return { kind, codec, length, offset, crc, payloadLength };
}

// --- receiver -> sender ---

export function encodeOffsetReply(kind: number, offset: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUInt8(kind, 0);
  b.writeBigUInt64BE(BigInt(offset), 1);
  return b;
}

export function encodeErrorReply(type: ErrorType, message: string): Buffer {
  const json = Buffer.from(JSON.stringify({ type, message }).slice(0, MAX_HELLO_BYTES), 'utf8');
  const b = Buffer.alloc(5);
  b.writeUInt8(ReplyKind.error, 0);
  b.writeUInt32BE(json.length, 1);
  return Buffer.concat([b, json]);
}

export type Reply =
  | { kind: 'accept' | 'ack' | 'done'; offset: number }
  | { kind: 'error'; type: ErrorType; message: string };

const ErrorReplySchema = z.object({ type: z.enum(Object.values(ErrorTypes) as [ErrorType, ...ErrorType[]]), message: z.string() });

/** Reads one reply; null at a clean end of stream. */
export async function readReply(r: ByteReader): Promise<Reply | null> {
  const head = await r.readExact(1, true);
  if (!head) return null;
  const kind = head.readUInt8(0);
  if (kind === ReplyKind.error) {
    const len = (await r.readExact(4)).readUInt32BE(0);
    if (len > MAX_HELLO_BYTES * 4) throw bad('receiver error message too long');
    const parsed = ErrorReplySchema.safeParse(JSON.parse((await r.readExact(len)).toString('utf8')));
    if (!parsed.success) throw bad('malformed error reply from receiver');
    return { kind: 'error', ...parsed.data };
  }
  const offset = Number((await r.readExact(8)).readBigUInt64BE(0));
  if (kind === ReplyKind.accept) return { kind: 'accept', offset };
  if (kind === ReplyKind.ack) return { kind: 'ack', offset };
  if (kind === ReplyKind.done) return { kind: 'done', offset };
  throw bad(`unknown reply kind ${kind}`);
}

/**
 * Exact-length reads over an async byte stream (a socket). Hand-rolled because it is a dozen
 * lines and keeps the socket's own backpressure: we only pull the next chunk when we need it.
 */
export class ByteReader {
  private buf: Buffer[] = [];
  private have = 0;
  private readonly it: AsyncIterator<Buffer>;

  constructor(source: AsyncIterable<Buffer>) {
    this.it = source[Symbol.asyncIterator]();
  }

  /** Returns exactly n bytes; with `eofOk`, null on a clean end before the first byte. */
  async readExact(n: number, eofOk: true): Promise<Buffer | null>;
  async readExact(n: number, eofOk?: false): Promise<Buffer>;
  async readExact(n: number, eofOk = false): Promise<Buffer | null> {
    while (this.have < n) {
      const next = await this.it.next();
      if (next.done) {
        if (eofOk && this.have === 0) return null;
        throw bad(`stream ended inside a message (${this.have} of ${n} bytes)`);
      }
      this.buf.push(next.value);
      this.have += next.value.length;
    }
    const all = this.buf.length === 1 ? this.buf[0] : Buffer.concat(this.buf, this.have);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.buf = rest.length ? [rest] : [];
    this.have = rest.length;
    return out;
  }
}

/** Reads and validates the hello; throws BadFrame (not AuthFailed: the token is checked later). */
export async function readHello(r: ByteReader): Promise<Hello> {
  const magic = await r.readExact(MAGIC.length);
  if (!magic.equals(MAGIC)) throw bad('not a Ferry data-plane stream (bad magic)');
  const len = (await r.readExact(4)).readUInt32BE(0);
  if (len > MAX_HELLO_BYTES) throw bad(`hello of ${len} bytes exceeds ${MAX_HELLO_BYTES}`);
  let json: unknown;
  try {
    json = JSON.parse((await r.readExact(len)).toString('utf8'));
  } catch {
    throw bad('hello is not JSON');
  }
  const parsed = HelloSchema.safeParse(json);
  if (!parsed.success) throw bad(`invalid hello: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  return parsed.data;
}
