// Bad and hostile input, sent by hand over a real socket: each is refused with a clear error, and
// the destination disk is untouched (same size, same bytes).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import { join } from 'node:path';
import { stat, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import lzo from 'lzo';
import { crc32c } from '@node-rs/crc32';
import { ByteReader, encodeFrameHeader, encodeHello, endFrame, FrameKind, readReply, type Reply } from '../../src/dataplane/frame.js';
import { WireCodec } from '../../src/dataplane/codec.js';
import type { ReceiverEndpoint } from '../../src/dataplane/types.js';
import { killAllReceivers, sha256OfFile, spawnReceiver, tempDir, type ReceiverChild } from './helpers.js';

const KiB = 1024;
const SIZE = 256 * KiB;
const CHUNK = 64 * KiB;
let dir: { path: string; cleanup: () => Promise<void> };
let rx: ReceiverChild;
let before: string;
const disk = () => join(dir.path, 'dst.img');

beforeAll(async () => {
  dir = await tempDir();
  // A recognisable destination disk: any stray write would change its digest.
  await writeFile(disk(), randomBytes(SIZE));
  before = await sha256OfFile(disk());
  rx = await spawnReceiver({ host: '127.0.0.1', token: 'right-token', diskPath: disk(), diskSize: SIZE, tls: false, stateFile: join(dir.path, 'state.json') });
});
afterEach(async () => {
  // Untouched after every refusal.
  expect((await stat(disk())).size).toBe(SIZE);
  expect(await sha256OfFile(disk())).toBe(before);
});
afterAll(async () => {
  await killAllReceivers();
  await dir.cleanup();
});

/** Sends raw bytes as a hostile sender would, returns every reply until the receiver closes. */
async function exchange(ep: ReceiverEndpoint, parts: Buffer[]): Promise<Reply[]> {
  const s = net.connect({ host: ep.host, port: ep.port });
  s.on('error', () => {});
  await new Promise((r) => s.once('connect', r));
  for (const p of parts) s.write(p);
  s.end(); // half-close: the receiver sees exactly these bytes, then the end of the stream
  const reader = new ByteReader(s);
  const replies: Reply[] = [];
  try {
    for (let r = await readReply(reader); r; r = await readReply(reader)) replies.push(r);
  } catch {
    /* connection dropped */
  }
  s.destroy();
  return replies;
}

const hello = (over: Partial<Parameters<typeof encodeHello>[0]> = {}) =>
  encodeHello({ token: 'right-token', streamId: 'bulk', startOffset: 0, diskSize: SIZE, chunkSize: CHUNK, ...over });

function frame(offset: number, raw: Buffer, over: Partial<Parameters<typeof encodeFrameHeader>[0]> = {}, payload = raw): Buffer {
  return Buffer.concat([
    encodeFrameHeader({ kind: FrameKind.data, codec: WireCodec.none, length: raw.length, offset, crc: crc32c(raw), payloadLength: payload.length, ...over }),
    payload,
  ]);
}

function errorOf(replies: Reply[]): { type: string; message: string } {
  const e = replies.find((r) => r.kind === 'error');
  expect(e, `replies: ${JSON.stringify(replies)}`).toBeDefined();
  return e as { type: string; message: string };
}

describe('receiver refuses', () => {
  it('a wrong token, before accepting anything', async () => {
    const replies = await exchange(rx.endpoint, [hello({ token: 'wrong-token' }), frame(0, Buffer.alloc(CHUNK, 1))]);
    expect(replies.some((r) => r.kind === 'accept')).toBe(false);
    expect(errorOf(replies)).toMatchObject({ type: 'AuthFailed', message: expect.stringMatching(/token is wrong/) });
  });

  it('garbage instead of a hello', async () => {
    const replies = await exchange(rx.endpoint, [Buffer.from('GET / HTTP/1.1\r\n\r\n')]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/magic/) });
  });

  it('a disk size that differs from the destination', async () => {
    const replies = await exchange(rx.endpoint, [hello({ diskSize: SIZE * 2 })]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadInput', message: expect.stringMatching(/must be equal/) });
  });

  it('a truncated frame', async () => {
    const full = frame(0, Buffer.alloc(CHUNK, 7));
    const replies = await exchange(rx.endpoint, [hello(), full.subarray(0, full.length - 100)]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/ended inside/) });
  });

  it('a frame whose CRC does not match its bytes', async () => {
    const raw = Buffer.alloc(CHUNK, 9);
    const replies = await exchange(rx.endpoint, [hello(), frame(0, raw, { crc: (crc32c(raw) ^ 1) >>> 0 })]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/CRC-32C mismatch/) });
  });

  it('a frame past the end of the disk', async () => {
    const replies = await exchange(rx.endpoint, [hello(), frame(SIZE - 100, Buffer.alloc(200, 3))]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/past the disk end/) });
  });

  it('an offset beyond 2^53 (u64 overflow attempt)', async () => {
    const h = encodeFrameHeader({ kind: FrameKind.data, codec: WireCodec.zero, length: 512, offset: 0, crc: 0, payloadLength: 0 });
    h.writeBigUInt64BE(0xffff_ffff_ffff_fe00n, 8);
    const replies = await exchange(rx.endpoint, [hello(), h]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/past the disk end/) });
  });

  it('a frame longer than the negotiated chunk size', async () => {
    const replies = await exchange(rx.endpoint, [hello(), frame(0, Buffer.alloc(CHUNK * 2, 5))]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/exceeds the chunk size/) });
  });

  it('a payload length larger than any honest encoding of the frame', async () => {
    const h = encodeFrameHeader({ kind: FrameKind.data, codec: WireCodec.lzo, length: 4096, offset: 0, crc: 0, payloadLength: 0x7fff_ffff });
    const replies = await exchange(rx.endpoint, [hello(), h]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/payload of \d+ bytes exceeds/) });
  });

  it('a decompression bomb: a small LZO payload that expands past the declared length', async () => {
    const bomb = lzo.compress(Buffer.alloc(16 * 1024 * 1024)); // ~74 KiB that inflate to 16 MiB
    const declared = Buffer.alloc(CHUNK); // says 64 KiB
    const payload = bomb.subarray(0, Math.min(bomb.length, CHUNK + CHUNK / 16)); // fits the payload cap
    const replies = await exchange(rx.endpoint, [hello(), frame(0, declared, { codec: WireCodec.lzo }, payload)]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/LZO payload/) });
  });

  it('frames that go backwards', async () => {
    const a = Buffer.alloc(CHUNK, 1);
    // The first frame is legitimate and gets written: it carries the disk's own bytes, so the digest check still holds.
    const { readFile } = await import('node:fs/promises');
    const cur = (await readFile(disk())).subarray(CHUNK, 2 * CHUNK);
    const replies = await exchange(rx.endpoint, [hello({ streamId: 'backwards' }), frame(CHUNK, Buffer.from(cur)), frame(0, a)]);
    expect(errorOf(replies)).toMatchObject({ type: 'BadFrame', message: expect.stringMatching(/goes backwards/) });
  });

  it('and still serves an honest stream afterwards', async () => {
    const { readFile } = await import('node:fs/promises');
    const cur = await readFile(disk());
    const replies = await exchange(rx.endpoint, [hello({ streamId: 'honest' }), frame(0, cur.subarray(0, CHUNK)), endFrame()]);
    expect(replies.map((r) => r.kind)).toEqual(['accept', 'done']);
  });
});
