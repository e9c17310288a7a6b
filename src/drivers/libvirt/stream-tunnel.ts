// Carries libvirt's two host-to-host streams (the RPC connection to the destination libvirtd and
// QEMU's migration stream) over Ferry's own token-authenticated, cert-pinned TLS connection, so the
// hosts need no libvirtd TCP/TLS listener and no SSH trust. The source side can also HOLD a channel:
// it stops forwarding source→destination bytes (e.g. the memory stream while the paused guest's last
// dirty disk blocks are copied), which keeps the source QEMU alive until Ferry releases it.
import net from 'node:net';
import tls from 'node:tls';
import { createHash, timingSafeEqual } from 'node:crypto';
import { lstat, rm } from 'node:fs/promises';
import { FerryError, ErrorTypes, type ErrorType } from '../../shared/errors.js';
import { generateSelfSignedCert, pinnedTlsOptions } from '../../dataplane/tls-cert.js';

export type TunnelTarget = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };
export type TunnelListen = TunnelTarget;
export interface TunnelEndpoint { host: string; port: number; token: string; certPem: string }
export interface TunnelServer {
  endpoint: TunnelEndpoint;
  close(): Promise<void>;
  /** Authenticated tunnels currently piped to a target. */
  connections(): number;
}
export interface TunnelClient {
  /** Stops forwarding local→remote bytes on `channel` (existing and future connections); resolves once no more
   *  bytes will be written to the remote side for it (reads paused, what was already read handed to the kernel).
   *  Bytes already on the wire still arrive. Remote→local keeps flowing. */
  hold(channel: string): Promise<void>;
  /**
   * Turns the channel's tail guard off and sends what it kept back. With the guard on, the
   * newest `guardTail` bytes never reach the remote side, so a stream's end (QEMU's last section)
   * cannot arrive there until the caller allows it.
   */
  releaseTail(channel: string): void;
  release(channel: string): void;
  /** Bytes forwarded local→remote per channel (for progress/tests). */
  bytesSent(channel: string): number;
  /** Where `channel` listens, with the kernel-picked port when it was given as 0. */
  listenAddress(channel: string): TunnelListen;
  close(): Promise<void>;
}
type Log = (line: string) => void;

const MAX_LINE = 4096; // hello and reply lines, newline included
const HANDSHAKE_TIMEOUT_MS = 10_000;
const KEEPALIVE_MS = 30_000; // a vanished peer must not leave virsh/QEMU blocked forever

/** One direction of a tunnel, with backpressure, an optional hold, and a way to wait until its writes are flushed. */
class Flow {
  bytes = 0;
  private pending = 0; // writes not yet handed to the kernel
  private waitingDrain = false;
  private idle: Array<() => void> = [];
  /** The newest bytes, kept back while the tail guard is on (see TunnelClient.releaseTail). */
  private tail: Buffer = Buffer.alloc(0);
  private endedUnderGuard = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly held: () => boolean,
    private readonly guard: () => number = () => 0,
  ) {
    from.on('data', (chunk: Buffer) => {
      this.bytes += chunk.length;
      const keep = this.guard();
      if (keep > 0 || this.tail.length) {
        const all = this.tail.length ? Buffer.concat([this.tail, chunk]) : chunk;
        const n = Math.min(keep, all.length);
        this.tail = Buffer.from(all.subarray(all.length - n));
        chunk = all.subarray(0, all.length - n);
        if (!chunk.length) return;
      }
      this.send(chunk);
    });
    from.on('end', () => {
      // Half-close travels through, but not past a guarded tail: the end waits with it.
      if (this.guard() > 0 || this.tail.length) this.endedUnderGuard = true;
      else to.end();
    });
    to.once('close', () => this.wake());
    this.resume();
  }

  private send(chunk: Buffer): void {
    this.pending++;
    const ok = this.to.write(chunk, () => --this.pending === 0 && this.wake());
    if (!ok && !this.waitingDrain) {
      this.waitingDrain = true;
      this.from.pause();
      // resume() checks the hold: a drain must not undo it.
      this.to.once('drain', () => { this.waitingDrain = false; this.resume(); });
    }
  }

  /** Sends what the guard kept back (the guard is off by now), and an end that waited for it. */
  flushTail(): void {
    if (this.to.destroyed) return;
    const t = this.tail;
    this.tail = Buffer.alloc(0);
    if (t.length) this.send(t);
    if (this.endedUnderGuard) {
      this.endedUnderGuard = false;
      this.to.end();
    }
  }

  resume(): void {
    if (!this.waitingDrain && !this.held()) this.from.resume();
  }

  /** Stops 'data' at once; a chunk already read was written synchronously in its handler. */
  pause = (): void => void this.from.pause();

  flushed(): Promise<void> {
    return this.pending === 0 || this.to.destroyed ? Promise.resolve() : new Promise((resolve) => this.idle.push(resolve));
  }

  private wake = (): void => this.idle.splice(0).forEach((f) => f());
}

/** Pipes a↔b; any abnormal close (error, destroy before both ends finished) destroys the other side. */
function splice(a: net.Socket, b: net.Socket, held: () => boolean, onClosed: (up: Flow, down: Flow) => void, guard?: () => number): Flow {
  const up = new Flow(a, b, held, guard);
  const down = new Flow(b, a, () => false);
  let open = 2;
  for (const [x, y] of [[a, b], [b, a]] as const) {
    const closed = (hadError: boolean) => {
      if (hadError || !(x.readableEnded && y.readableEnded)) y.destroy();
      if (--open === 0) onClosed(up, down);
    };
    if (x.closed) closed(true);
    else x.once('close', closed);
  }
  return up;
}

/** Reads one '\n'-terminated line (≤ MAX_LINE bytes) and leaves the socket paused with any rest unshifted. */
function readLine(s: net.Socket): Promise<string | undefined> {
  return new Promise((resolve) => {
    let buf: Buffer = Buffer.alloc(0);
    const done = (line: string | undefined) => {
      s.off('data', onData).off('end', onGone).off('close', onGone);
      resolve(line);
    };
    const onGone = () => done(undefined);
    const onData = (chunk: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const nl = buf.indexOf(10);
      if (nl < 0 && buf.length < MAX_LINE) return;
      s.pause(); // before dropping our listener: a flowing socket with no listener loses data
      if (nl < 0 || nl >= MAX_LINE) { s.destroy(); return done(undefined); } // too long: drop, no reply
      if (nl + 1 < buf.length) s.unshift(buf.subarray(nl + 1));
      done(buf.subarray(0, nl).toString('utf8'));
    };
    s.on('data', onData).on('end', onGone).on('close', onGone);
    s.resume();
  });
}

function tokenMatches(given: string, expected: string): boolean {
  // Hash first so the comparison is constant-time whatever the lengths.
  return timingSafeEqual(createHash('sha256').update(given).digest(), createHash('sha256').update(expected).digest());
}

function tune(s: net.Socket): void {
  s.setNoDelay(true); // the libvirt RPC is latency-bound
  s.setKeepAlive(true, KEEPALIVE_MS);
}

function parseJson(line: string): Record<string, unknown> {
  const v: unknown = (() => { try { return JSON.parse(line); } catch { return undefined; } })();
  return v && typeof v === 'object' ? (v as Record<string, unknown>) : {};
}

/** Keeps `set` to the open sockets (close() destroys them) and each one's error for its close line. */
function tracker(set: Set<net.Socket>): (s: net.Socket) => void {
  return (s) => {
    set.add(s);
    s.on('error', (err) => errors.set(s, err)); // no unhandled 'error'
    s.once('close', () => set.delete(s));
  };
}
const errors = new WeakMap<net.Socket, Error>();
const failure = (a: net.Socket, b: net.Socket) => ((e) => (e ? ` (${e.message})` : ''))(errors.get(a) ?? errors.get(b));
const fail = (type: ErrorType, message: string, details?: unknown): never => { throw new FerryError(type, message, details); };
const where = (t: TunnelTarget) => (t.kind === 'unix' ? t.path : `${t.host}:${t.port}`);

/** Destination side: authenticates each TLS connection's hello and pipes it to `targets[channel]`. */
export async function startTunnelServer(opts: {
  listenHost: string; port?: number; token: string; targets: Record<string, TunnelTarget>; log?: Log;
}): Promise<TunnelServer> {
  if (!opts.token) fail(ErrorTypes.BadInput, 'the stream tunnel needs a non-empty token');
  const log = opts.log ?? (() => {});
  const cert = await generateSelfSignedCert(opts.listenHost);
  const sockets = new Set<net.Socket>();
  const track = tracker(sockets);
  let live = 0;
  // Half-open only once secure: set at creation, a client that drops mid-handshake would linger until the timeout.
  const server = tls.createServer({ key: cert.keyPem, cert: cert.certPem, minVersion: 'TLSv1.2', handshakeTimeout: HANDSHAKE_TIMEOUT_MS, noDelay: true });
  server.on('connection', track); // so close() also ends handshakes in progress
  server.on('tlsClientError', (err, s) => log(`tunnel: TLS handshake from ${s.remoteAddress} failed: ${err.message}`));
  server.on('secureConnection', (sock: tls.TLSSocket) => void (async () => {
    sock.allowHalfOpen = true;
    track(sock);
    tune(sock);
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    const refuse = (type: ErrorType, message: string) => {
      log(`tunnel: refused ${peer}: ${message}`);
      sock.end(JSON.stringify({ error: message, type }) + '\n');
      setTimeout(() => sock.destroy(), 2_000).unref(); // in case the peer never closes its side
    };
    const timer = setTimeout(() => sock.destroy(), HANDSHAKE_TIMEOUT_MS);
    const line = await readLine(sock);
    clearTimeout(timer);
    if (line === undefined) return log(`tunnel: dropped ${peer}: no valid hello line`);
    const hello = parseJson(line);
    if (typeof hello.token !== 'string' || !tokenMatches(hello.token, opts.token)) {
      return refuse(ErrorTypes.AuthFailed, 'the tunnel token is wrong: this tunnel belongs to another migration');
    }
    const channel = typeof hello.channel === 'string' ? hello.channel : '';
    const target = Object.hasOwn(opts.targets, channel) ? opts.targets[channel] : undefined;
    if (!target) return refuse(ErrorTypes.BadInput, `unknown tunnel channel ${JSON.stringify(channel)}`);
    const t = net.connect({ ...(target.kind === 'unix' ? { path: target.path } : { host: target.host, port: target.port }), allowHalfOpen: true });
    track(t);
    let connected = false;
    t.once('error', (err) => { if (!connected) refuse(ErrorTypes.DriverError, `tunnel target ${where(target)} unreachable: ${err.message}`); });
    sock.once('close', () => { if (!connected) t.destroy(); });
    t.once('connect', () => {
      connected = true;
      if (sock.destroyed) return t.destroy();
      tune(t);
      sock.write('{"ok":true}\n'); // only once the target is there, so the client's first bytes have a home
      live++;
      log(`tunnel ${channel}: open ${peer} → ${where(target)}`);
      splice(sock, t, () => false, (up, down) => {
        live--;
        log(`tunnel ${channel}: closed ${peer}, ${up.bytes} bytes to target, ${down.bytes} bytes back${failure(sock, t)}`);
      });
    });
  })());
  await listen(server, { kind: 'tcp', host: opts.listenHost, port: opts.port ?? 0 }, 'tunnel server');
  return {
    endpoint: { host: opts.listenHost, port: (server.address() as net.AddressInfo).port, token: opts.token, certPem: cert.certPem },
    connections: () => live,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}

/** Source side: each connection accepted on a local listener becomes one tunnel connection for its channel. */
export async function startTunnelClient(opts: {
  endpoint: TunnelEndpoint;
  /** `guardTail`: bytes of the newest local→remote data kept back until releaseTail (0: none). */
  listeners: Array<{ channel: string; listen: TunnelListen; guardTail?: number }>;
  log?: Log;
  /** A local connection the tunnel could not carry (its local socket is closed): AuthFailed for a wrong token or certificate. */
  onError?: (channel: string, err: FerryError) => void;
}): Promise<TunnelClient> {
  const { endpoint: ep } = opts;
  const log = opts.log ?? (() => {});
  const channels = new Map<string, { held: boolean; doneBytes: number; flows: Set<Flow>; guardTail: number; at?: TunnelListen }>();
  const servers: Array<{ server: net.Server; path?: string }> = [];
  const sockets = new Set<net.Socket>();
  const track = tracker(sockets);
  const need = (channel: string) =>
    channels.get(channel) ?? fail(ErrorTypes.BadInput, `no tunnel listener for channel ${JSON.stringify(channel)}`);

  const accept = (channel: string, local: net.Socket) => {
    const ch = need(channel);
    track(local);
    tune(local);
    // allowHalfOpen is honoured by tls.connect (passed to the TLSSocket) but missing from @types/node.
    const tlsOpts = { host: ep.host, port: ep.port, ...pinnedTlsOptions(ep.certPem), minVersion: 'TLSv1.2' as const, allowHalfOpen: true };
    const remote = tls.connect(tlsOpts);
    track(remote);
    let spliced = false;
    const abort = (why: string, type: ErrorType = ErrorTypes.DriverError) => {
      clearTimeout(timer);
      if (!local.destroyed) {
        const err = new FerryError(type, `tunnel ${channel}: connection to ${ep.host}:${ep.port} failed: ${why}`);
        log(`${err.message} (${type})`);
        opts.onError?.(channel, err);
      }
      local.destroy();
      remote.destroy();
    };
    const timer = setTimeout(() => abort('handshake timed out'), HANDSHAKE_TIMEOUT_MS);
    // A certificate that is not the pinned one is an authentication failure, not a network one.
    remote.once('error', (err: NodeJS.ErrnoException) => {
      const badCert = /CERT|SIGN|ISSUER/.test(err.code ?? '') || /pinned/.test(err.message);
      if (!spliced) abort(err.message, badCert ? ErrorTypes.AuthFailed : ErrorTypes.DriverError);
    });
    local.once('close', () => { if (!spliced) remote.destroy(); });
    remote.once('secureConnect', async () => {
      tune(remote);
      remote.write(JSON.stringify({ token: ep.token, channel }) + '\n');
      const line = await readLine(remote);
      clearTimeout(timer);
      if (line === undefined) return abort('the tunnel server closed the connection');
      const reply = parseJson(line);
      const type = Object.values(ErrorTypes).find((t) => t === reply.type) ?? ErrorTypes.DriverError;
      if (reply.ok !== true) return abort(`refused: ${typeof reply.error === 'string' ? reply.error : line}`, type);
      if (local.destroyed) return remote.destroy();
      spliced = true;
      log(`tunnel ${channel}: open → ${ep.host}:${ep.port}`);
      // `local` was accepted paused (pauseOnConnect): nothing is read from it until here, and not at all while held.
      ch.flows.add(splice(local, remote, () => ch.held, (up, down) => {
        ch.flows.delete(up);
        ch.doneBytes += up.bytes;
        log(`tunnel ${channel}: closed, ${up.bytes} bytes sent, ${down.bytes} bytes received${failure(local, remote)}`);
      }, () => ch.guardTail));
    });
  };

  const client: TunnelClient = {
    async hold(channel) {
      const ch = need(channel);
      ch.held = true;
      ch.flows.forEach((f) => f.pause());
      await Promise.all([...ch.flows].map((f) => f.flushed()));
    },
    release(channel) {
      const ch = need(channel);
      ch.held = false;
      ch.flows.forEach((f) => f.resume());
    },
    releaseTail(channel) {
      const ch = need(channel);
      ch.guardTail = 0;
      ch.flows.forEach((f) => f.flushTail());
    },
    bytesSent: (channel) => [...need(channel).flows].reduce((n, f) => n + f.bytes, need(channel).doneBytes),
    listenAddress: (channel) => need(channel).at!,
    async close() {
      const closed = servers.map(({ server }) => new Promise<void>((resolve) => server.close(() => resolve())));
      for (const s of sockets) s.destroy();
      await Promise.all(closed);
      await Promise.all(servers.map(({ path }) => (path ? rm(path, { force: true }) : undefined)));
    },
  };

  try {
    for (const { channel, listen: where } of opts.listeners) {
      if (channels.has(channel)) fail(ErrorTypes.BadInput, `tunnel channel ${JSON.stringify(channel)} is listed twice`);
      channels.set(channel, { held: false, doneBytes: 0, flows: new Set(), guardTail: opts.listeners.find((l) => l.channel === channel)?.guardTail ?? 0 });
      const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (s) => accept(channel, s));
      if (where.kind === 'unix') await removeStaleSocket(where.path);
      await listen(server, where, `tunnel channel ${channel}`);
      servers.push({ server, ...(where.kind === 'unix' ? { path: where.path } : {}) });
      need(channel).at = where.kind === 'unix' ? where : { ...where, port: (server.address() as net.AddressInfo).port };
    }
  } catch (err) {
    await client.close();
    throw err;
  }
  return client;
}

async function listen(server: net.Server, at: TunnelListen, what: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const desc = at.kind === 'unix' ? at.path : `${at.host}:${at.port}`;
      reject(new FerryError(ErrorTypes.DriverError, err.code === 'EADDRINUSE'
        ? `${what} cannot listen on ${desc}: already in use (pick another port)`
        : `${what} cannot listen on ${desc}: ${err.message}`, { code: err.code }));
    });
    server.listen(at.kind === 'unix' ? { path: at.path } : { host: at.host, port: at.port }, () => {
      server.removeAllListeners('error');
      server.on('error', () => {}); // a failed accept must not crash the worker; that connection is just lost
      resolve();
    });
  });
}

/** A socket file left by a dead process blocks listen(): remove it, but never a live socket or a non-socket file. */
async function removeStaleSocket(path: string): Promise<void> {
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err; });
  if (!st) return;
  if (!st.isSocket()) fail(ErrorTypes.BadInput, `${path} exists and is not a socket; not removing it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path }, () => resolve(true)).once('error', () => resolve(false));
    probe.once('connect', () => probe.destroy());
  });
  if (alive) fail(ErrorTypes.DriverError, `${path} is in use by a live listener`, { code: 'EADDRINUSE' });
  await rm(path, { force: true });
}
