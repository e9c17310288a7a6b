// NBD wire format and the handshake phase (fixed newstyle, NBD_OPT_GO, structured replies, one
// meta context), shared by the client's transmission phase in nbd-client.ts.
import type { Socket } from 'node:net';
import { FerryError, ErrorTypes } from '../../shared/errors.js';

const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const OPT_STRUCTURED_REPLY = 8;
const OPT_SET_META_CONTEXT = 10;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_META_CONTEXT = 4;
const INFO_EXPORT = 0;

/** Transmission flags the server sends with the export's size. */
export const TFLAG_READ_ONLY = 1 << 1;
export const TFLAG_SEND_FLUSH = 1 << 2;
export const TFLAG_SEND_FUA = 1 << 3;
export const TFLAG_SEND_WRITE_ZEROES = 1 << 6;

export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;
export const CMD_FLAG_FUA = 1 << 0;

export const REPLY_FLAG_DONE = 1;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR_BIT = 0x8000;

/** QEMU's NBD server refuses requests (and write payloads) above 32 MiB. */
export const MAX_REQUEST = 32 * 1024 * 1024;

/** The errno values of the NBD spec, by number, for messages. */
const NBD_ERRNO: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
const NBD_ENOSPC = 28;

export function nbdError(msg: string): FerryError {
  return new FerryError(ErrorTypes.DriverError, `NBD: ${msg}`);
}

/** An error the server reported for one request; the connection itself stays usable. */
export function requestError(code: number, message: string): FerryError {
  const name = NBD_ERRNO[code] ?? `error ${code}`;
  const detail = message ? `${name}: ${message}` : name;
  // Same type and wording as the receiver's local-file ENOSPC: a qcow2 on a full file system.
  if (code === NBD_ENOSPC) {
    return new FerryError(ErrorTypes.DestinationDiskFull, `the destination disk's file system is full (NBD ${detail}) while writing the disk image: free space on the destination host, then retry the migration`);
  }
  return nbdError(`request failed with ${detail}`);
}

/** Reads exact byte counts from a socket (the NBD stream has no framing beyond lengths). */
export class ByteReader {
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

export interface Negotiated {
  size: number;
  /** Transmission flags (TFLAG_*). */
  flags: number;
  metaContextId: number | null;
}

/** Runs the handshake up to the transmission phase. */
export async function negotiate(sock: Socket, rd: ByteReader, opts: NbdConnectOptions): Promise<Negotiated> {
  const out: Negotiated = { size: 0, flags: 0, metaContextId: null };
  const hello = await rd.read(18);
  if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) {
    throw nbdError('not a newstyle NBD server');
  }
  const flags = hello.readUInt16BE(16);
  if (!(flags & FLAG_FIXED_NEWSTYLE)) throw nbdError('server lacks fixed newstyle negotiation');
  const cflags = Buffer.alloc(4);
  cflags.writeUInt32BE(FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES));
  sock.write(cflags);

  await option(sock, rd, OPT_STRUCTURED_REPLY, Buffer.alloc(0), () => undefined);

  const name = Buffer.from(opts.exportName, 'utf8');
  if (opts.metaContext) {
    const q = Buffer.from(opts.metaContext, 'utf8');
    const data = Buffer.alloc(4 + name.length + 4 + 4 + q.length);
    let o = data.writeUInt32BE(name.length, 0);
    o += name.copy(data, o);
    o = data.writeUInt32BE(1, o);
    o = data.writeUInt32BE(q.length, o);
    q.copy(data, o);
    await option(sock, rd, OPT_SET_META_CONTEXT, data, (type, payload) => {
      if (type === REP_META_CONTEXT) out.metaContextId = payload.readUInt32BE(0);
    });
    if (out.metaContextId === null) throw nbdError(`server does not offer meta context ${opts.metaContext}`);
  }

  const go = Buffer.alloc(4 + name.length + 2);
  let o = go.writeUInt32BE(name.length, 0);
  o += name.copy(go, o);
  go.writeUInt16BE(0, o);
  await option(sock, rd, OPT_GO, go, (type, payload) => {
    if (type === REP_INFO && payload.readUInt16BE(0) === INFO_EXPORT) {
      out.size = Number(payload.readBigUInt64BE(2));
      out.flags = payload.readUInt16BE(10);
    }
  });
  return out;
}

/** Sends one option and consumes replies until ACK; error replies become FerryErrors. */
async function option(sock: Socket, rd: ByteReader, opt: number, data: Buffer, onReply: (type: number, payload: Buffer) => void): Promise<void> {
  const hdr = Buffer.alloc(16);
  hdr.writeBigUInt64BE(IHAVEOPT, 0);
  hdr.writeUInt32BE(opt, 8);
  hdr.writeUInt32BE(data.length, 12);
  sock.write(Buffer.concat([hdr, data]));
  for (;;) {
    const r = await rd.read(20);
    if (r.readBigUInt64BE(0) !== REPLY_MAGIC) throw nbdError('bad option reply magic');
    const type = r.readUInt32BE(12);
    const payload = await rd.read(r.readUInt32BE(16));
    if (type & 0x80000000) {
      throw nbdError(`option ${opt} refused (reply ${type >>> 0}): ${payload.toString('utf8') || 'no message'}`);
    }
    if (type === REP_ACK) return;
    onReply(type, payload);
  }
}
