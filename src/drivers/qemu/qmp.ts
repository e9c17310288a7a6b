// A small QMP client over a unix socket. Hand-rolled on purpose: npm has no maintained QMP client
// (the few packages named qmp/qemu-qmp are years old, untyped and TCP-only), and the protocol is
// one JSON object per line: a greeting, `qmp_capabilities`, then `execute` with ids and events.
import { createConnection, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';
import { FerryError, ErrorTypes } from '../../shared/errors.js';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

type Pending = { resolve: (v: unknown) => void; reject: (e: Error) => void; command: string };

/** Thrown when QEMU answers a command with an error object; `qmpClass` is QEMU's error class. */
export class QmpCommandError extends FerryError {
  constructor(
    public readonly command: string,
    public readonly qmpClass: string,
    public readonly desc: string,
  ) {
    super(ErrorTypes.DriverError, `QMP ${command} failed: ${desc} (${qmpClass})`);
  }
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private closed = false;

  private constructor(private readonly sock: Socket, readonly path: string) {
    super();
  }

  /**
   * Connects and negotiates capabilities. QEMU serves one QMP client per socket at a time: a second
   * client is accepted by the kernel but gets no greeting until the first leaves, hence the timeout.
   */
  static async connect(path: string, timeoutMs = 10_000): Promise<QmpClient> {
    const sock = createConnection({ path });
    const client = new QmpClient(sock, path);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new FerryError(ErrorTypes.DriverError, `QMP ${path}: no greeting within ${timeoutMs} ms (another client connected?)`));
      }, timeoutMs);
      const fail = (err: Error) => {
        clearTimeout(timer);
        reject(new FerryError(ErrorTypes.DriverError, `QMP ${path}: ${err.message}`));
      };
      sock.once('error', fail);
      const onLine = (msg: Record<string, unknown>) => {
        if ('QMP' in msg) {
          clearTimeout(timer);
          sock.off('error', fail);
          client.off('_greeting', onLine);
          resolve();
        }
      };
      client.on('_greeting', onLine);
      client.attach();
    });
    await client.execute('qmp_capabilities');
    return client;
  }

  private attach(): void {
    this.sock.setEncoding('utf8');
    this.sock.on('data', (chunk: string) => {
      this.buf += chunk;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (line) this.dispatch(line);
      }
    });
    const down = (err?: Error) => {
      if (this.closed) return;
      this.closed = true;
      const e = new FerryError(ErrorTypes.DriverError, `QMP ${this.path}: connection closed${err ? `: ${err.message}` : ''}`);
      for (const p of this.pending.values()) p.reject(e);
      this.pending.clear();
      this.emit('close');
    };
    this.sock.on('error', down);
    this.sock.on('close', () => down());
  }

  private dispatch(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // QEMU only sends JSON; a torn line would be a QEMU bug, not ours to crash on
    }
    if ('QMP' in msg) {
      this.emit('_greeting', msg);
      return;
    }
    if ('event' in msg) {
      this.emit('event', msg as unknown as QmpEvent);
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id ? this.pending.get(id) : undefined;
    if (!p || !id) return;
    this.pending.delete(id);
    if ('error' in msg) {
      const err = msg.error as { class?: string; desc?: string };
      p.reject(new QmpCommandError(p.command, err.class ?? 'GenericError', err.desc ?? 'unknown error'));
    } else {
      p.resolve(msg.return);
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new FerryError(ErrorTypes.DriverError, `QMP ${this.path}: connection closed`));
    const id = `ferry-${this.nextId++}`;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, command });
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id }) + '\n');
    });
  }

  /** Resolves with the first event named `name` that `match` accepts. */
  waitForEvent(name: string, match: (e: QmpEvent) => boolean = () => true, timeoutMs = 60_000): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new FerryError(ErrorTypes.DriverError, `QMP ${this.path}: no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      const onEvent = (e: QmpEvent) => {
        if (e.event === name && match(e)) {
          cleanup();
          resolve(e);
        }
      };
      const onClose = () => {
        cleanup();
        reject(new FerryError(ErrorTypes.DriverError, `QMP ${this.path}: closed while waiting for ${name}`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
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

/** Connects, runs `fn`, always disconnects: QMP allows one client, so never hold it idle. */
export async function withQmp<T>(path: string, fn: (q: QmpClient) => Promise<T>, timeoutMs?: number): Promise<T> {
  const q = await QmpClient.connect(path, timeoutMs);
  try {
    return await fn(q);
  } finally {
    await q.close();
  }
}
