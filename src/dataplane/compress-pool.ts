// A pool of worker threads that checks chunks for zeros, checksums and compresses them, so the
// socket keeps sending while the next chunks compress on the other cores.
import { Worker } from 'node:worker_threads';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import type { Codec } from './types.js';
import type { WireCodec } from './codec.js';

export interface EncodedChunk {
  offset: number;
  length: number;
  wire: WireCodec;
  /** CRC-32C of the raw bytes (0 for zero chunks: there are no bytes to check). */
  crc: number;
  /** Empty for zero chunks. */
  payload: Buffer;
}

// The worker is plain CommonJS evaluated from a string: the same code then runs under tsx,
// vitest and the compiled dist/ without a TS loader in the worker. It loads the real `lzo` and
// `@node-rs/crc32` modules by absolute path and mirrors codec.ts's encodeChunk.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const lzo = require(workerData.lzoPath);
const { crc32c } = require(workerData.crcPath);
let zeros = Buffer.alloc(0);
parentPort.on('message', (job) => {
  try {
    const raw = Buffer.from(job.buf, job.byteOffset, job.length);
    if (zeros.length < raw.length) zeros = Buffer.alloc(raw.length);
    if (raw.equals(zeros.subarray(0, raw.length))) {
      parentPort.postMessage({ id: job.id, wire: 2, crc: 0, buf: null });
      return;
    }
    const crc = crc32c(raw) >>> 0;
    if (job.codec === 'lzo') {
      const c = lzo.compress(raw);
      if (c.length < raw.length) {
        // Never Buffer.from(c): small copies come from the shared pool, whose ArrayBuffer must not be transferred.
        let own = c;
        if (c.byteOffset !== 0 || c.byteLength !== c.buffer.byteLength) { own = Buffer.allocUnsafeSlow(c.length); c.copy(own); }
        parentPort.postMessage({ id: job.id, wire: 1, crc, buf: own.buffer, len: own.length }, [own.buffer]);
        return;
      }
    }
    parentPort.postMessage({ id: job.id, wire: 0, crc, buf: job.buf, byteOffset: job.byteOffset, len: raw.length }, [job.buf]);
  } catch (err) {
    parentPort.postMessage({ id: job.id, error: String(err && err.message || err) });
  }
});
`;

interface Pending {
  id: number;
  offset: number;
  length: number;
  resolve: (c: EncodedChunk) => void;
  reject: (e: Error) => void;
}

interface WorkerReply {
  id: number;
  wire: WireCodec;
  crc: number;
  buf: ArrayBuffer | null;
  byteOffset?: number;
  len?: number;
  error?: string;
}

export class CompressPool {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly queue: { job: Pending; buf: Buffer }[] = [];
  private readonly running = new Map<Worker, Pending>();
  private nextId = 1;
  private closed = false;

  constructor(private readonly codec: Codec, size = availableParallelism()) {
    const require = createRequire(import.meta.url);
    const workerData = { lzoPath: require.resolve('lzo'), crcPath: require.resolve('@node-rs/crc32') };
    for (let i = 0; i < Math.max(1, size); i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true, workerData });
      w.on('message', (m: WorkerReply) => this.onMessage(w, m));
      w.on('error', (err) => this.onWorkerError(w, err));
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  /** Encodes one chunk; `raw` is handed over to a worker (do not reuse it). */
  encode(offset: number, raw: Buffer): Promise<EncodedChunk> {
    if (this.closed) return Promise.reject(new Error('compression pool is closed'));
    return new Promise((resolve, reject) => {
      this.queue.push({ job: { id: this.nextId++, offset, length: raw.length, resolve, reject }, buf: raw });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.idle.length && this.queue.length) {
      const w = this.idle.pop()!;
      const { job, buf } = this.queue.shift()!;
      this.running.set(w, job);
      // Transfer, not copy, when the Buffer owns its whole ArrayBuffer (fresh reads do).
      // (allocUnsafeSlow, not Buffer.from: a small copy would land in the shared pool, not transferable.)
      let own = buf;
      if (buf.byteOffset !== 0 || buf.byteLength !== buf.buffer.byteLength) {
        own = Buffer.allocUnsafeSlow(buf.length);
        buf.copy(own);
      }
      const ab = own.buffer as ArrayBuffer;
      w.postMessage({ id: job.id, codec: this.codec, buf: ab, byteOffset: 0, length: own.length }, [ab]);
    }
  }

  private onMessage(w: Worker, m: WorkerReply): void {
    const job = this.running.get(w);
    this.running.delete(w);
    this.idle.push(w);
    if (job) {
      if (m.error) job.reject(new Error(`compression worker: ${m.error}`));
      else {
        const payload = m.buf ? Buffer.from(m.buf, m.byteOffset ?? 0, m.len ?? 0) : Buffer.alloc(0);
        job.resolve({ offset: job.offset, length: job.length, wire: m.wire, crc: m.crc, payload });
      }
    }
    this.dispatch();
  }

  private onWorkerError(w: Worker, err: Error): void {
    const job = this.running.get(w);
    this.running.delete(w);
    job?.reject(err);
    // A dead worker takes no more jobs; fail the rest rather than hang.
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers.splice(i, 1);
    if (this.workers.length === 0) {
      for (const q of this.queue.splice(0)) q.job.reject(err);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const q of this.queue.splice(0)) q.job.reject(new Error('compression pool closed'));
    for (const job of this.running.values()) job.reject(new Error('compression pool closed'));
    this.running.clear();
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
