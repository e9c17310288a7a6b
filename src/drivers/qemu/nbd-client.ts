// A minimal NBD client (fixed newstyle handshake, NBD_OPT_GO, structured replies, READ and
// BLOCK_STATUS) for QEMU's built-in NBD server on a unix socket. Hand-rolled: npm has no NBD
// client, and shelling out to libnbd's `nbdinfo --map` per round would parse text and could not
// serve the data plane's reads. One request is in flight at a time (the data plane reads chunks
// in order; QEMU answers a 1 MiB read far faster than the link sends it).
import { createConnection, type Socket } from 'node:net';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { Extent } from '../../shared/extents.js';
import type { BlockSource } from '../../dataplane/types.js';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_SET_META_CONTEXT = 10;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const INFO_EXPORT = 0;
const CMD_READ = 0;
const CMD_DISC = 2;
const CMD_BLOCK_STATUS = 7;
const REPLY_FLAG_DONE = 1;
const REPLY_TYPE_NONE = 0;
const REPLY_TYPE_OFFSET_DATA = 1;
const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_BLOCK_STATUS = 5;
const REPLY_TYPE_ERROR_BIT = 0x8000;
/** Pseudo chunk type for the payload of a simple (non-structured) reply: data without an offset. */
const SIMPLE_DATA = -1;

/** QEMU's NBD server refuses requests above 32 MiB. */
const MAX_REQUEST = 32 * 1024 * 1024;

function nbdError(msg: string): FerryError {
  return new FerryError(ErrorTypes.DriverError, `NBD: ${msg}`);
}

/** Reads exact byte counts from a socket (the NBD stream has no framing beyond lengths). */
class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private error: Error | null = null;

  constructor(sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.pump();
    });
    const fail = (e: Error) => {
      this.error ??= e;
      if (this.waiter) {
        this.waiter.reject(this.error);
        this.waiter = null;
      }
    };
    sock.on('error', (e) => fail(nbdError(e.message)));
    sock.on('close', () => fail(nbdError('connection closed by server')));
  }

  private pump(): void {
    if (!this.waiter || this.have < this.waiter.n) return;
    const { n, resolve } = this.waiter;
    this.waiter = null;
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = Buffer.from(all.subarray(0, n));
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.have = rest.length;
    resolve(out);
  }

  read(n: number): Promise<Buffer> {
    if (n === 0) return Promise.resolve(Buffer.alloc(0));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.pump();
      if (this.waiter && this.error) {
        this.waiter = null;
        reject(this.error);
      }
    });
  }
}

export interface NbdConnectOptions {
  socketPath: string;
  exportName: string;
  /** e.g. `qemu:dirty-bitmap:NAME`; negotiated with NBD_OPT_SET_META_CONTEXT. */
  metaContext?: string;
}

export class NbdClient {
  private handle = 0n;
  private chain: Promise<unknown> = Promise.resolve();
  private metaContextId: number | null = null;

  private constructor(
    private readonly sock: Socket,
    private readonly rd: ByteReader,
    public size = 0,
  ) {}

  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const sock = createConnection({ path: opts.socketPath });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', (e) => reject(nbdError(`${opts.socketPath}: ${e.message}`)));
    });
    const c = new NbdClient(sock, new ByteReader(sock));
    try {
      await c.handshake(opts);
    } catch (e) {
      sock.destroy();
      throw e;
    }
    return c;
  }

  private async handshake(opts: NbdConnectOptions): Promise<void> {
    const hello = await this.rd.read(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
      throw nbdError('not a newstyle NBD server');
    }
    const flags = hello.readUInt16BE(16);
    if (!(flags & FLAG_FIXED_NEWSTYLE)) throw nbdError('server lacks fixed newstyle negotiation');
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
    this.sock.write(cflags);

    await this.option(OPT_STRUCTURED_REPLY, Buffer.alloc(0), () => undefined);

    const name = Buffer.from(opts.exportName, 'utf8');
    if (opts.metaContext) {
      const q = Buffer.from(opts.metaContext, 'utf8');
      const data = Buffer.alloc(4 + name.length + 4 + 4 + q.length);
      let o = data.writeUInt32BE(name.length, 0);
      o += name.copy(data, o);
      o = data.writeUInt32BE(1, o);
      o = data.writeUInt32BE(q.length, o);
      q.copy(data, o);
      await this.option(OPT_SET_META_CONTEXT, data, (type, payload) => {
        if (type === REP_META_CONTEXT) this.metaContextId = payload.readUInt32BE(0);
      });
      if (this.metaContextId === null) throw nbdError(`server does not offer meta context ${opts.metaContext}`);
    }

    const go = Buffer.alloc(4 + name.length + 2);
    let o = go.writeUInt32BE(name.length, 0);
    o += name.copy(go, o);
    go.writeUInt16BE(0, o);
    await this.option(OPT_GO, go, (type, payload) => {
      if (type === REP_INFO && payload.readUInt16BE(0) === INFO_EXPORT) this.size = Number(payload.readBigUInt64BE(2));
    });
  }

  /** Sends one option and consumes replies until ACK; error replies become FerryErrors. */
  private async option(opt: number, data: Buffer, onReply: (type: number, payload: Buffer) => void): Promise<void> {
    const hdr = Buffer.alloc(16);
    hdr.writeBigUInt64BE(IHAVEOPT, 0);
    hdr.writeUInt32BE(opt, 8);
    hdr.writeUInt32BE(data.length, 12);
    this.sock.write(Buffer.concat([hdr, data]));
    for (;;) {
      const r = await this.rd.read(20);
      if (r.readBigUInt64BE(0) !== REPLY_MAGIC) throw nbdError('bad option reply magic');
      const type = r.readUInt32BE(12);
      const payload = await this.rd.read(r.readUInt32BE(16));
      if (type & 0x80000000) {
        throw nbdError(`option ${opt} refused (reply ${type >>> 0}): ${payload.toString('utf8') || 'no message'}`);
      }
      if (type === REP_ACK) return;
      onReply(type, payload);
    }
  }

  /** Serializes requests: one in flight at a time keeps reply parsing trivial. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn, fn);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private sendRequest(type: number, offset: number, length: number): bigint {
    const h = ++this.handle;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(h, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.sock.write(req);
    return h;
  }

  /** Reads reply chunks for `handle` until the final one, passing each structured chunk on. */
  private async replies(handle: bigint, onChunk: (type: number, payload: Buffer) => Promise<void> | void, simpleLen: number): Promise<void> {
    for (;;) {
      const magicBuf = await this.rd.read(4);
      const magic = magicBuf.readUInt32BE(0);
      if (magic === SIMPLE_REPLY_MAGIC) {
        const r = await this.rd.read(12);
        const err = r.readUInt32BE(0);
        if (r.readBigUInt64BE(4) !== handle) throw nbdError('reply for an unknown request');
        if (err) throw nbdError(`request failed with error ${err}`);
        if (simpleLen) await onChunk(SIMPLE_DATA, await this.rd.read(simpleLen));
        return;
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
        throw nbdError(`request failed with error ${code}: ${payload.subarray(6, 6 + mlen).toString('utf8')}`);
      }
      if (type !== REPLY_TYPE_NONE) await onChunk(type, payload);
      if (flags & REPLY_FLAG_DONE) return;
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
      await this.serial(async () => {
        const h = this.sendRequest(CMD_READ, base, n);
        await this.replies(
          h,
          (type, payload) => {
            if (type === SIMPLE_DATA) {
              payload.copy(out, done);
            } else if (type === REPLY_TYPE_OFFSET_DATA) {
              const off = Number(payload.readBigUInt64BE(0));
              const data = payload.subarray(8);
              if (off < base || off + data.length > base + n) throw nbdError('read reply outside the request');
              data.copy(out, done + (off - base));
            } else if (type === REPLY_TYPE_OFFSET_HOLE) {
              const off = Number(payload.readBigUInt64BE(0));
              const len = payload.readUInt32BE(8);
              if (off < base || off + len > base + n) throw nbdError('hole reply outside the request');
            }
          },
          n,
        );
      });
      done += n;
    }
    return out;
  }

  /** Extents where the negotiated meta context reports `flags & mask` (e.g. dirty bit 1). */
  async blockStatus(mask = 1): Promise<Extent[]> {
    if (this.metaContextId === null) throw nbdError('no meta context negotiated');
    const out: Extent[] = [];
    let offset = 0;
    while (offset < this.size) {
      const len = Math.min(this.size - offset, 0x80000000);
      let advanced = 0;
      await this.serial(async () => {
        const h = this.sendRequest(CMD_BLOCK_STATUS, offset, len);
        await this.replies(
          h,
          (type, payload) => {
            if (type !== REPLY_TYPE_BLOCK_STATUS || payload.readUInt32BE(0) !== this.metaContextId) return;
            let pos = offset;
            for (let i = 4; i + 8 <= payload.length; i += 8) {
              const l = payload.readUInt32BE(i);
              const f = payload.readUInt32BE(i + 4);
              if (f & mask) out.push({ offset: pos, length: Math.min(l, this.size - pos) });
              pos += l;
            }
            advanced = Math.max(advanced, pos - offset);
          },
          0,
        );
      });
      if (advanced <= 0) throw nbdError(`block status made no progress at offset ${offset}`);
      offset += advanced;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.sock.destroyed) return;
    try {
      await this.serial(async () => {
        this.sendRequest(CMD_DISC, 0, 0);
      });
    } catch {
      // closing anyway
    }
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
export class NbdBlockSource implements BlockSource {
  private constructor(private readonly client: NbdClient) {}

  static async open(socketPath: string, exportName: string): Promise<NbdBlockSource> {
    return new NbdBlockSource(await NbdClient.connect({ socketPath, exportName }));
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
