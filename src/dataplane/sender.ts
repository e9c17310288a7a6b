// The source side of the data plane: reads planned extents in chunks, has the pool compress them,
// and streams frames in increasing offset order to a receiver, resuming after its acknowledgement.
import net from 'node:net';
import tls from 'node:tls';
import { availableParallelism } from 'node:os';
import { FerryError, ErrorTypes } from '../shared/errors.js';
import { extentsFrom, normalizeExtents, totalLength, type Extent } from '../shared/extents.js';
import { CODECS, type BlockSource, type ReceiverEndpoint, type StreamPlan, type TransferOptions, type TransferProgress } from './types.js';
import { ByteReader, encodeFrameHeader, encodeHello, endFrame, FrameKind, MAX_CHUNK_SIZE, readReply } from './frame.js';
import { CompressPool, type EncodedChunk } from './compress-pool.js';
import { WireCodec } from './codec.js';
import { TokenBucket } from './token-bucket.js';
import { pinnedTlsOptions } from './tls-cert.js';

export interface SendArgs {
  endpoint: ReceiverEndpoint;
  source: BlockSource;
  plan: StreamPlan;
  options: TransferOptions;
  onProgress?: (p: TransferProgress) => void;
  signal?: AbortSignal;
}

const CONNECT_TIMEOUT_MS = 30_000;

/**
 * Sends one stream. Starts at max(plan.startOffset, the receiver's acknowledged offset for this
 * stream id), so a retry never resends what is durably at the destination. Resolves once the
 * receiver has acknowledged the end of the stream durably.
 */
export async function sendStream(args: SendArgs): Promise<TransferProgress> {
  const { endpoint, source, plan, options, signal } = args;
  const t0 = performance.now();
  validate(args);
  const extents = normalizeExtents(plan.extents);
  const totalBytes = totalLength(extents);
  const progress: TransferProgress = {
    streamId: plan.streamId, ackedOffset: plan.startOffset ?? 0, doneBytes: 0, totalBytes, wireBytes: 0, zeroBytes: 0, elapsedMs: 0,
  };
  const report = (acked: number) => {
    progress.ackedOffset = Math.max(progress.ackedOffset, acked);
    progress.doneBytes = totalBytes - totalLength(extentsFrom(extents, progress.ackedOffset));
    progress.elapsedMs = Math.round(performance.now() - t0);
    args.onProgress?.({ ...progress });
  };
  if (signal?.aborted) throw cancelled();

  const socket = await connect(endpoint, signal);
  const reader = new ByteReader(socket);
  let failure: unknown;
  const fail = (err: unknown) => {
    failure ??= err;
    socket.destroy();
  };
  const onAbort = () => fail(cancelled());
  signal?.addEventListener('abort', onAbort, { once: true });
  const pool = new CompressPool(options.codec, options.workers ?? availableParallelism());
  try {
    const write = async (buf: Buffer) => {
      // A destroyed socket never emits 'drain' again: stop here instead of waiting forever.
      if (failure !== undefined) throw failure;
      if (socket.destroyed) throw new Error('connection to the receiver closed');
      progress.wireBytes += buf.length;
      if (!socket.write(buf)) {
        if (socket.destroyed) throw new Error('connection to the receiver closed');
        await new Promise<void>((resolve, reject) => {
          const done = (err?: Error) => {
            socket.off('drain', ok).off('close', closed).off('error', done);
            if (err) reject(err); else resolve();
          };
          const ok = () => done();
          const closed = () => done(new Error('connection closed while sending'));
          socket.on('drain', ok).on('close', closed).on('error', done);
        });
      }
    };
    await write(encodeHello({
      token: endpoint.token, streamId: plan.streamId, startOffset: plan.startOffset ?? 0, diskSize: source.size, chunkSize: options.chunkSize,
    }));
    const accept = await readReply(reader);
    if (!accept) throw new Error('receiver closed the connection before accepting the stream');
    if (accept.kind === 'error') throw new FerryError(accept.type, `receiver refused the stream: ${accept.message}`);
    if (accept.kind !== 'accept') throw new FerryError(ErrorTypes.BadFrame, `receiver sent ${accept.kind} before accepting`);
    const start = Math.max(plan.startOffset ?? 0, accept.offset);
    report(start);

    // Acknowledgements arrive while we send; the stream is complete only on `done`.
    const acks = (async () => {
      for (;;) {
        const r = await readReply(reader);
        if (!r) throw new Error('receiver closed the connection before acknowledging the stream');
        if (r.kind === 'error') throw new FerryError(r.type, `receiver refused the stream: ${r.message}`, { fromReceiver: true });
        report(r.kind === 'done' ? Math.max(r.offset, lastEnd(extents)) : r.offset);
        if (r.kind === 'done') return;
      }
    })();
    acks.catch(fail);

    const bucket = options.bandwidthBytesPerSec ? new TokenBucket(options.bandwidthBytesPerSec, options.chunkSize) : undefined;
    const sendChunk = async (c: EncodedChunk) => {
      const header = encodeFrameHeader({
        kind: FrameKind.data, codec: c.wire, length: c.length, offset: c.offset, crc: c.crc, payloadLength: c.payload.length,
      });
      await bucket?.take(header.length + c.payload.length, signal);
      if (c.wire === WireCodec.zero) progress.zeroBytes += c.length;
      await write(c.payload.length ? Buffer.concat([header, c.payload]) : header);
    };
    // Bounded in flight: memory stays at about (workers * 2) chunks whatever the disk size.
    const maxInFlight = Math.max(2, (options.workers ?? availableParallelism()) * 2);
    const inFlight: Promise<EncodedChunk>[] = [];
    try {
      const todo = extentsFrom(extents, start);
      // Where the source already knows it holds zeros, the chunk goes as a zero frame, unread.
      const zeros = todo.length && source.zeroExtents ? new ZeroMap(await source.zeroExtents()) : undefined;
      for (const chunk of chunks(todo, options.chunkSize)) {
        if (failure) break;
        if (inFlight.length >= maxInFlight) await sendChunk(await inFlight.shift()!);
        if (zeros?.covers(chunk)) {
          inFlight.push(Promise.resolve({ offset: chunk.offset, length: chunk.length, wire: WireCodec.zero, crc: 0, payload: Buffer.alloc(0) }));
          continue;
        }
        const p = source.read(chunk.offset, chunk.length).then((buf) => pool.encode(chunk.offset, buf));
        p.catch(() => {}); // awaited in order below; avoid an unhandled rejection meanwhile
        inFlight.push(p);
      }
      while (inFlight.length && !failure) await sendChunk(await inFlight.shift()!);
      if (!failure) await write(endFrame());
      await acks;
    } catch (err) {
      fail(err);
    }
    if (failure) {
      // The receiver's own reason (bad frame, full disk) beats the socket error it caused here.
      const theirs = await Promise.race([acks.then(() => undefined, (e: unknown) => e), delay(2_000)]);
      if (theirs instanceof FerryError && failure !== theirs && !(failure instanceof FerryError && failure.type === ErrorTypes.MigrationCancelled)) {
        throw theirs;
      }
      throw failure;
    }
    report(progress.ackedOffset);
    return { ...progress };
  } finally {
    signal?.removeEventListener('abort', onAbort);
    socket.destroy();
    await pool.close();
  }
}

function validate({ source, plan, options }: SendArgs): void {
  if (!Number.isSafeInteger(options.chunkSize) || options.chunkSize <= 0 || options.chunkSize > MAX_CHUNK_SIZE) {
    throw new FerryError(ErrorTypes.BadInput, `chunk size ${options.chunkSize} must be an integer in 1..${MAX_CHUNK_SIZE}`);
  }
  if (!CODECS.includes(options.codec)) throw new FerryError(ErrorTypes.BadInput, `unknown codec ${String(options.codec)}; use one of ${CODECS.join(', ')}`);
  if (options.bandwidthBytesPerSec !== undefined && !(options.bandwidthBytesPerSec >= 0)) {
    throw new FerryError(ErrorTypes.BadInput, `bandwidth cap ${options.bandwidthBytesPerSec} must be >= 0`);
  }
  for (const e of plan.extents) {
    if (!Number.isSafeInteger(e.offset) || !Number.isSafeInteger(e.length) || e.offset < 0 || e.length < 0 || e.offset + e.length > source.size) {
      throw new FerryError(ErrorTypes.BadInput, `extent [${e.offset}, +${e.length}) is outside the ${source.size}-byte source disk`);
    }
  }
  if (plan.startOffset !== undefined && (!Number.isSafeInteger(plan.startOffset) || plan.startOffset < 0)) {
    throw new FerryError(ErrorTypes.BadInput, `start offset ${plan.startOffset} is not a byte offset`);
  }
}

function* chunks(extents: Extent[], chunkSize: number): Generator<Extent> {
  for (const e of extents) {
    for (let off = e.offset; off < e.offset + e.length; off += chunkSize) {
      yield { offset: off, length: Math.min(chunkSize, e.offset + e.length - off) };
    }
  }
}

/** Sorted, merged zero ranges; chunks are asked for in ascending order, so a cursor suffices. */
class ZeroMap {
  private readonly ranges: Extent[];
  private i = 0;

  constructor(ranges: Extent[]) {
    this.ranges = normalizeExtents(ranges);
  }

  covers(c: Extent): boolean {
    while (this.i < this.ranges.length && this.ranges[this.i]!.offset + this.ranges[this.i]!.length <= c.offset) this.i++;
    const r = this.ranges[this.i];
    return r !== undefined && r.offset <= c.offset && c.offset + c.length <= r.offset + r.length;
  }
}

function lastEnd(extents: Extent[]): number {
  const last = extents[extents.length - 1];
  return last ? last.offset + last.length : 0;
}

function cancelled(): FerryError {
  return new FerryError(ErrorTypes.MigrationCancelled, 'disk stream cancelled');
}

function delay(ms: number): Promise<undefined> {
  return new Promise((r) => setTimeout(() => r(undefined), ms).unref());
}

async function connect(ep: ReceiverEndpoint, signal?: AbortSignal): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const s: net.Socket = ep.certPem
      ? tls.connect({ host: ep.host, port: ep.port, ...pinnedTlsOptions(ep.certPem) })
      : net.connect({ host: ep.host, port: ep.port });
    const timer = setTimeout(() => s.destroy(new Error(`connecting to ${ep.host}:${ep.port} timed out`)), CONNECT_TIMEOUT_MS);
    const onAbort = () => s.destroy(cancelled());
    signal?.addEventListener('abort', onAbort, { once: true });
    const cleanup = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    s.once(ep.certPem ? 'secureConnect' : 'connect', () => {
      cleanup();
      s.off('error', onError);
      s.on('error', () => {}); // later errors surface through reads and writes
      s.setNoDelay(true);
      resolve(s);
    });
    const onError = (err: Error) => {
      cleanup();
      reject(err instanceof FerryError ? err : new Error(`cannot reach the receiver at ${ep.host}:${ep.port}: ${err.message}`));
    };
    s.once('error', onError);
  });
}
