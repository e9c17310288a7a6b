// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, structured replies, READ, WRITE,
// WRITE_ZEROES, FLUSH and BLOCK_STATUS) for QEMU's NBD servers (the built-in one, qemu-nbd) on a
// unix socket. Hand-rolled: npm has no NBD client, and shelling out to libnbd's `nbdinfo --map`
// per round would parse text and could not serve the data plane's reads and writes. One request
// is in flight at a time (the data plane reads and writes chunks in order; QEMU answers a 1 MiB
// request far faster than the link carries it). Wire constants and the handshake: nbd-protocol.ts.
import { createConnection, type Socket } from 'node:net';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { Extent } from '../../shared/extents.js';
import type { BlockSource } from '../../dataplane/types.js';
import {
  ByteReader, CMD_BLOCK_STATUS, CMD_DISC, CMD_FLAG_FUA, CMD_FLUSH, CMD_READ, CMD_WRITE, CMD_WRITE_ZEROES, MAX_REQUEST,
  REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, REPLY_TYPE_ERROR_BIT, REPLY_TYPE_NONE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE,
  REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, TFLAG_READ_ONLY, TFLAG_SEND_FLUSH, TFLAG_SEND_FUA,
  TFLAG_SEND_WRITE_ZEROES, negotiate, nbdError, requestError, type NbdConnectOptions,
} from './nbd-protocol.js';

export type { NbdConnectOptions } from './nbd-protocol.js';

/** Pseudo chunk type for the payload of a simple (non-structured) reply: data without an offset. */
const SIMPLE_DATA = -1;

type OnChunk = (type: number, payload: Buffer) => void;

export class NbdClient {
  private handle = 0n;
  private chain: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly sock: Socket,
    private readonly rd: ByteReader,
    public readonly size: number,
    /** Transmission flags from the handshake. */
    private readonly flags: number,
    private readonly metaContextId: number | null,
  ) {}

  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const sock = createConnection({ path: opts.socketPath });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', (e) => reject(nbdError(`${opts.socketPath}: ${e.message}`)));
    });
    const rd = new ByteReader(sock);
    try {
      const n = await negotiate(sock, rd, opts);
      return new NbdClient(sock, rd, n.size, n.flags, n.metaContextId);
    } catch (e) {
      sock.destroy();
      throw e;
    }
  }

  get readOnly(): boolean {
    return (this.flags & TFLAG_READ_ONLY) !== 0;
  }

  get canWriteZeroes(): boolean {
    return (this.flags & TFLAG_SEND_WRITE_ZEROES) !== 0;
  }

  /**
   * Sends one request (requests are serialized) and consumes its replies. An error the server
   * reports is thrown once all chunks are read, so the connection stays in step; anything else
   * (a closed socket, a malformed reply) leaves the stream unparseable, so the socket is dropped.
   */
  private request(type: number, offset: number, length: number, onChunk: OnChunk, opts: { flags?: number; payload?: Buffer; simpleLen?: number } = {}): Promise<void> {
    const run = async () => {
      let serverError: FerryError | null = null;
      try {
        const h = this.sendRequest(type, offset, length, opts.flags ?? 0, opts.payload);
        serverError = await this.replies(h, onChunk, opts.simpleLen ?? 0);
      } catch (e) {
        this.sock.destroy();
        throw e;
      }
      if (serverError) throw serverError;
    };
    const p = this.chain.then(run, run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private sendRequest(type: number, offset: number, length: number, flags: number, payload?: Buffer): bigint {
    const h = ++this.handle;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(flags, 4);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(h, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.sock.write(req);
    if (payload?.length) this.sock.write(payload);
    return h;
  }

  /** Reads reply chunks for `handle` until the final one; returns the server's error, if any. */
  private async replies(handle: bigint, onChunk: OnChunk, simpleLen: number): Promise<FerryError | null> {
    let error: FerryError | null = null;
    for (;;) {
      const magicBuf = await this.rd.read(4);
      const magic = magicBuf.readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        const r = await this.rd.read(12);
        const err = r.readUInt32BE(0);
        if (r.readBigUInt64BE(4) !== handle) throw nbdError('reply for an unknown request');
        if (err) return requestError(err, ''); // no payload follows an error
        if (simpleLen) onChunk(SIMPLE_DATA, await this.rd.read(simpleLen));
        return null;
      }
      if (magic !== STRUCTURED_REPLY_MAGIC) throw nbdError(`bad reply magic 0x${magic.toString(16)}`);
      const r = await this.rd.read(16);
      const flags = r.readUInt16BE(0);
      const type = r.readUInt16BE(2);
      if (r.readBigUInt64BE(4) !== handle) throw nbdError('reply for an unknown request');
      const payload = await this.rd.read(r.readUInt32BE(12));
      if (type & REPLY_TYPE_ERROR_BIT) {
        const code = payload.length >= 4 ? payload.readUInt32BE(0) : 0;
        const mlen = payload.length >= 6 ? payload.readUInt16BE(4) : 0;
        error ??= requestError(code, payload.subarray(6, 6 + mlen).toString('utf8'));
      } else if (type !== REPLY_TYPE_NONE && !error) {
        onChunk(type, payload);
      }
      if (flags & REPLY_FLAG_DONE) return error;
    }
  }

  private checkRange(offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw new FerryError(ErrorTypes.BadInput, `NBD range ${offset}+${length} outside the ${this.size}-byte export`);
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    const out = Buffer.alloc(length); // holes stay zero
    for (let done = 0; done < length; ) {
      const n = Math.min(MAX_REQUEST, length - done);
      const base = offset + done;
      const at = done;
      await this.request(
        CMD_READ,
        base,
        n,
        (type, payload) => {
          if (type === SIMPLE_DATA) {
            payload.copy(out, at);
          } else if (type === REPLY_TYPE_OFFSET_DATA) {
            const off = Number(payload.readBigUInt64BE(0));
            const data = payload.subarray(8);
            if (off < base || off + data.length > base + n) throw nbdError('read reply outside the request');
            data.copy(out, at + (off - base));
          } else if (type === REPLY_TYPE_OFFSET_HOLE) {
            const off = Number(payload.readBigUInt64BE(0));
            const len = payload.readUInt32BE(8);
            if (off < base || off + len > base + n) throw nbdError('hole reply outside the request');
          }
        },
        { simpleLen: n },
      );
      done += n;
    }
    return out;
  }

  /**
   * Writes `data` at `offset`. With `fua` each request is durable when it returns (NBD_CMD_FLAG_FUA,
   * or a flush after it when the server lacks FUA); without it, call flush().
   */
  async write(offset: number, data: Buffer, opts: { fua?: boolean } = {}): Promise<void> {
    this.checkRange(offset, data.length);
    const fua = opts.fua && this.flags & TFLAG_SEND_FUA ? CMD_FLAG_FUA : 0;
    for (let done = 0; done < data.length; ) {
      const n = Math.min(MAX_REQUEST, data.length - done);
      await this.request(CMD_WRITE, offset + done, n, () => undefined, { flags: fua, payload: data.subarray(done, done + n) });
      done += n;
    }
    if (opts.fua && !fua) await this.flush();
  }

  /**
   * Zeroes a range without sending the zeros (NBD_CMD_WRITE_ZEROES). NO_HOLE is not set: the
   * server may deallocate the range, which keeps a sparse image sparse. Only when canWriteZeroes.
   */
  async writeZeroes(offset: number, length: number, opts: { fua?: boolean } = {}): Promise<void> {
    if (!this.canWriteZeroes) throw nbdError('the server does not accept WRITE_ZEROES');
    this.checkRange(offset, length);
    const fua = opts.fua && this.flags & TFLAG_SEND_FUA ? CMD_FLAG_FUA : 0;
    for (let done = 0; done < length; ) {
      const n = Math.min(MAX_REQUEST, length - done);
      await this.request(CMD_WRITE_ZEROES, offset + done, n, () => undefined, { flags: fua });
      done += n;
    }
    if (opts.fua && !fua) await this.flush();
  }

  /** Makes every completed write durable (NBD_CMD_FLUSH). */
  async flush(): Promise<void> {
    // Without SEND_FLUSH the client must not flush, and nothing else promises durability: refuse
    // rather than let a caller acknowledge writes that may still sit in a cache.
    if (!(this.flags & TFLAG_SEND_FLUSH)) throw nbdError('the server does not accept FLUSH, so writes cannot be made durable');
    await this.request(CMD_FLUSH, 0, 0, () => undefined);
  }

  /** Whether the server granted the meta context asked for at connect. */
  get hasMetaContext(): boolean {
    return this.metaContextId !== null;
  }

  /** Extents where the negotiated meta context reports `flags & mask` (e.g. dirty bit 1). */
  async blockStatus(mask = 1): Promise<Extent[]> {
    if (this.metaContextId === null) throw nbdError('no meta context negotiated');
    const out: Extent[] = [];
    let offset = 0;
    while (offset < this.size) {
      const len = Math.min(this.size - offset, 0x80000000);
      let advanced = 0;
      await this.request(CMD_BLOCK_STATUS, offset, len, (type, payload) => {
        if (type !== REPLY_TYPE_BLOCK_STATUS || payload.readUInt32BE(0) !== this.metaContextId) return;
        let pos = offset;
        for (let i = 4; i + 8 <= payload.length; i += 8) {
          const l = payload.readUInt32BE(i);
          const f = payload.readUInt32BE(i + 4);
          if (f & mask) out.push({ offset: pos, length: Math.min(l, this.size - pos) });
          pos += l;
        }
        advanced = Math.max(advanced, pos - offset);
      });
      if (advanced <= 0) throw nbdError(`block status made no progress at offset ${offset}`);
      offset += advanced;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.sock.destroyed) return;
    // DISC has no reply: queue it behind any request in flight, then half-close.
    await this.chain.then(() => {
      if (!this.sock.destroyed) this.sendRequest(CMD_DISC, 0, 0, 0);
    });
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
      setTimeout(() => {
        this.sock.destroy();
        resolve();
      }, 1000).unref();
    });
  }
}

/** The data plane's view of a disk served by QEMU's NBD server. */
/** NBD_STATE_ZERO of the `base:allocation` context: the range reads as zeros. */
const STATE_ZERO = 2;

export class NbdBlockSource implements BlockSource {
  private constructor(private readonly client: NbdClient) {}

  /** With `base:allocation` negotiated, so zeroExtents() can ask QEMU where the zeros are. */
  static async open(socketPath: string, exportName: string): Promise<NbdBlockSource> {
    return new NbdBlockSource(await NbdClient.connect({ socketPath, exportName, metaContext: 'base:allocation' }));
  }

  /** Holes and zero clusters of the export (QEMU answers from the image's allocation: SEEK_HOLE, qcow2 tables). */
  async zeroExtents(): Promise<Extent[]> {
    if (!this.client.hasMetaContext) return [];
    return this.client.blockStatus(STATE_ZERO);
  }

  get size(): number {
    return this.client.size;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.client.read(offset, length);
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
