// The destination side of the data plane: authenticates a sender, checks every frame, writes the
// disk with positioned writes, and acknowledges only what fdatasync made durable.
import net from 'node:net';
import tls from 'node:tls';
import { open, rename, readFile } from 'node:fs/promises';
import { createHash, timingSafeEqual } from 'node:crypto';
import { crc32c } from '@node-rs/crc32';
import { FerryError, ErrorTypes, type ErrorType } from '../shared/errors.js';
import type { DiskTarget, ReceiverEndpoint } from './types.js';
import { openLocalDiskTarget } from './disk-target.js';
import {
  ByteReader, decodeFrameHeader, encodeErrorReply, encodeOffsetReply, FrameKind, FRAME_HEADER_BYTES,
  MAX_CHUNK_SIZE, readHello, ReplyKind, type Hello,
} from './frame.js';
import { decodeChunk, WireCodec } from './codec.js';
import { generateSelfSignedCert } from './tls-cert.js';

export interface ReceiverOptions {
  host: string;
  /** 0 = ephemeral. */
  port?: number;
  token: string;
  /** The disk's path (on this machine unless `openDisk` says otherwise); named in errors. */
  diskPath: string;
  /** Opens the disk to write; default: the local file `diskPath`. A Xen node passes its host's file. */
  openDisk?: () => Promise<DiskTarget>;
  diskSize: number;
  /** Serve TLS with a freshly generated self-signed certificate (endpoint().certPem pins it). */
  tls: boolean;
  /** JSON file holding each stream's acknowledged offset, so a restarted worker can resume. */
  stateFile: string;
  /** fdatasync and acknowledge at least this often (bytes written). Default 8 MiB. */
  syncEveryBytes?: number;
  /** Largest chunk accepted. Default: MAX_CHUNK_SIZE. */
  maxChunkSize?: number;
  /** Observability hook: stream starts/ends and refusals. */
  onEvent?: (e: ReceiverEvent) => void;
}

export type ReceiverEvent =
  | { event: 'stream-start'; streamId: string; resumeOffset: number; remote: string }
  | { event: 'stream-end'; streamId: string; ackedOffset: number; bytesWritten: number; frames: number }
  | { event: 'refused'; streamId?: string; type: ErrorType; message: string; bytesWritten: number; remote: string };

interface StreamState {
  ackedOffset: number;
  done: boolean;
}

const HELLO_TIMEOUT_MS = 10_000;
const SYNC_EVERY_MS = 1_000;
const IDLE_TIMEOUT_MS = 120_000;

export class DiskReceiver {
  private readonly streams: Record<string, StreamState>;
  private readonly sockets = new Set<net.Socket>();
  private active: { socket: net.Socket; finished: Promise<void> } | undefined;
  private zeros = Buffer.alloc(0);

  private constructor(
    private readonly opts: ReceiverOptions,
    private readonly fh: DiskTarget,
    private readonly server: net.Server,
    private readonly certPem: string | undefined,
    streams: Record<string, StreamState>,
  ) {
    this.streams = streams;
  }

  static async open(opts: ReceiverOptions): Promise<DiskReceiver> {
    if (!Number.isSafeInteger(opts.diskSize) || opts.diskSize < 0) {
      throw new FerryError(ErrorTypes.BadInput, `disk size ${opts.diskSize} is not a byte count`);
    }
    if (!opts.token) throw new FerryError(ErrorTypes.BadInput, 'the receiver needs a non-empty token');
    const streams = await loadState(opts.stateFile);
    // Open without truncating: a reopened receiver keeps what earlier streams wrote.
    const fh = opts.openDisk ? await opts.openDisk() : await openLocalDiskTarget(opts.diskPath);
    try {
      const size = await fh.size();
      if (size > opts.diskSize) {
        throw new FerryError(ErrorTypes.BadInput, `${opts.diskPath} is ${size} bytes, larger than the ${opts.diskSize}-byte disk it should receive`);
      }
      if (size < opts.diskSize) await fh.truncate(opts.diskSize); // sparse: blocks come as frames arrive
      const cert = opts.tls ? await generateSelfSignedCert(opts.host) : undefined;
      // allowHalfOpen: a sender that half-closes after its last frame still gets its ack or error reply.
      const server = cert
        ? tls.createServer({ key: cert.keyPem, cert: cert.certPem, allowHalfOpen: true })
        : net.createServer({ allowHalfOpen: true });
      const r = new DiskReceiver(opts, fh, server, cert?.certPem, streams);
      server.on(cert ? 'secureConnection' : 'connection', (s: net.Socket) => r.accept(s));
      server.on('tlsClientError', () => {}); // a failed handshake just drops that connection
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(opts.port ?? 0, opts.host, () => {
          server.off('error', reject);
          resolve();
        });
      });
      return r;
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  endpoint(): ReceiverEndpoint {
    const addr = this.server.address() as net.AddressInfo;
    return { host: this.opts.host, port: addr.port, token: this.opts.token, ...(this.certPem ? { certPem: this.certPem } : {}) };
  }

  /** Highest offset of `streamId` durably written and acknowledged (0 if never seen). */
  ackedOffset(streamId: string): number {
    return this.streams[streamId]?.ackedOffset ?? 0;
  }

  /** True once the stream's end frame was received and everything before it is durable. */
  streamDone(streamId: string): boolean {
    return this.streams[streamId]?.done ?? false;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const s of this.sockets) s.destroy();
    await this.active?.finished;
    await closed;
    await this.fh.close();
  }

  private accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('error', () => {}); // surfaced through the reader; no unhandled 'error'
    socket.on('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    // A sender silent this long is gone (a retry would have replaced it): free the receiver.
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    void this.serve(socket);
  }

  private async serve(socket: net.Socket): Promise<void> {
    const remote = `${socket.remoteAddress}:${socket.remotePort}`;
    // Not the default iterator: it destroys the socket at EOF, and a half-closed sender must still get our reply.
    const reader = new ByteReader({ [Symbol.asyncIterator]: () => socket.iterator({ destroyOnReturn: false }) });
    const timer = setTimeout(() => socket.destroy(), HELLO_TIMEOUT_MS);
    let hello: Hello;
    try {
      hello = await readHello(reader);
      if (!tokenMatches(hello.token, this.opts.token)) {
        throw new FerryError(ErrorTypes.AuthFailed, 'the data-plane token is wrong: this receiver belongs to another migration');
      }
      if (hello.diskSize !== this.opts.diskSize) {
        throw new FerryError(ErrorTypes.BadInput, `the source disk is ${hello.diskSize} bytes, the destination disk ${this.opts.diskSize}: they must be equal`);
      }
      const max = this.opts.maxChunkSize ?? MAX_CHUNK_SIZE;
      if (hello.chunkSize > max) throw new FerryError(ErrorTypes.BadFrame, `chunk size ${hello.chunkSize} exceeds this receiver's ${max}`);
    } catch (err) {
      clearTimeout(timer);
      this.refuse(socket, undefined, err, 0, remote);
      return;
    }
    clearTimeout(timer);
    // One writer at a time: a new authenticated stream (a retried sender) replaces a stale one.
    if (this.active) {
      this.active.socket.destroy();
      await this.active.finished;
    }
    let release!: () => void;
    const finished = new Promise<void>((r) => (release = r));
    this.active = { socket, finished };
    try {
      await this.receiveStream(socket, reader, hello, remote);
    } finally {
      if (this.active?.socket === socket) this.active = undefined;
      release();
    }
  }

  private async receiveStream(socket: net.Socket, reader: ByteReader, hello: Hello, remote: string): Promise<void> {
    const id = hello.streamId;
    const prior = this.streams[id]?.ackedOffset ?? 0;
    this.opts.onEvent?.({ event: 'stream-start', streamId: id, resumeOffset: prior, remote });
    socket.write(encodeOffsetReply(ReplyKind.accept, prior));
    let end = Math.max(prior, 0);
    let minOffset = hello.startOffset;
    let unsynced = 0;
    let lastSync = Date.now();
    let bytesWritten = 0;
    let frames = 0;
    const syncEvery = this.opts.syncEveryBytes ?? 8 * 1024 * 1024;
    const flush = async (done: boolean) => {
      await this.fh.datasync();
      this.streams[id] = { ackedOffset: Math.max(end, this.streams[id]?.ackedOffset ?? 0), done };
      await saveState(this.opts.stateFile, this.streams);
      unsynced = 0;
      lastSync = Date.now();
      if (!socket.destroyed) socket.write(encodeOffsetReply(done ? ReplyKind.done : ReplyKind.ack, this.streams[id].ackedOffset));
    };
    try {
      for (;;) {
        const h = decodeFrameHeader(await reader.readExact(FRAME_HEADER_BYTES), {
          diskSize: this.opts.diskSize,
          chunkSize: hello.chunkSize,
          minOffset,
        });
        if (h.kind === FrameKind.end) {
          await flush(true);
          socket.end();
          this.opts.onEvent?.({ event: 'stream-end', streamId: id, ackedOffset: this.streams[id].ackedOffset, bytesWritten, frames });
          return;
        }
        const payload = h.payloadLength ? await reader.readExact(h.payloadLength) : Buffer.alloc(0);
        if (h.codec === WireCodec.zero) {
          bytesWritten += await this.writeZeros(h.offset, h.length);
        } else {
          const raw = decodeChunk(h.codec, payload, h.length);
          const crc = crc32c(raw) >>> 0;
          if (crc !== h.crc) {
            throw new FerryError(ErrorTypes.BadFrame, `CRC-32C mismatch in frame at ${h.offset} (${crc.toString(16)} != ${h.crc.toString(16)}): corrupted in transit`);
          }
          await this.writeAt(raw, h.offset);
          bytesWritten += raw.length;
        }
        frames += 1;
        minOffset = h.offset + h.length;
        end = Math.max(end, minOffset);
        unsynced += h.length;
        if (unsynced >= syncEvery || (unsynced > 0 && Date.now() - lastSync >= SYNC_EVERY_MS)) await flush(false);
      }
    } catch (err) {
      // Keep what was written before the bad frame: it is durable and acknowledged, so a retry resumes there.
      if (unsynced > 0 && classify(err).type !== ErrorTypes.DestinationDiskFull) await flush(false).catch(() => {});
      this.refuse(socket, id, err, bytesWritten, remote);
    }
  }

  private async writeAt(buf: Buffer, offset: number): Promise<void> {
    await this.fh.write(offset, buf);
  }

  /** Writes zeros only where the disk is not already zero, so a fresh sparse disk stays sparse. */
  private async writeZeros(offset: number, length: number): Promise<number> {
    if (this.zeros.length < length) this.zeros = Buffer.alloc(length);
    const cur = await this.fh.read(offset, length);
    if (cur.length === length && cur.equals(this.zeros.subarray(0, length))) return 0;
    await this.writeAt(this.zeros.subarray(0, length), offset);
    return length;
  }

  private refuse(socket: net.Socket, streamId: string | undefined, err: unknown, bytesWritten: number, remote: string): void {
    const fe = classify(err);
    this.opts.onEvent?.({ event: 'refused', streamId, type: fe.type, message: fe.message, bytesWritten, remote });
    if (socket.destroyed) return;
    // Half-close and drain instead of destroying: a reset could discard the error reply unread.
    socket.end(encodeErrorReply(fe.type, fe.message));
    socket.on('data', () => {});
    socket.resume();
    setTimeout(() => socket.destroy(), 2_000).unref();
  }
}

function classify(err: unknown): FerryError {
  if (err instanceof FerryError) return err;
  const code = (err as NodeJS.ErrnoException)?.code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new FerryError(ErrorTypes.DestinationDiskFull, `the destination disk's file system is full (${code}) while writing the disk image: free space on the destination host, then retry the migration`);
  }
  return new FerryError(ErrorTypes.BadFrame, `stream failed: ${(err as Error)?.message ?? String(err)}`);
}

function tokenMatches(given: string, expected: string): boolean {
  // Hash first so the comparison is constant-time whatever the lengths.
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

async function loadState(path: string): Promise<Record<string, StreamState>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  const parsed = JSON.parse(text) as { streams?: Record<string, StreamState> };
  return parsed.streams ?? {};
}

/** Write-to-temp, fsync, rename: a crash leaves the old state or the new one, never half. */
async function saveState(path: string, streams: Record<string, StreamState>): Promise<void> {
  const tmp = `${path}.tmp`;
  const f = await open(tmp, 'w');
  try {
    await f.writeFile(JSON.stringify({ streams }));
    await f.sync();
  } finally {
    await f.close();
  }
  await rename(tmp, path);
}
