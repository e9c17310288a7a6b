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

  constructor(private readonly from: net.Socket, private readonly to: net.Socket, private readonly held: () => boolean) {
    from.on('data', (chunk: Buffer) => {
      this.bytes += chunk.length;
      this.pending++;
      const ok = to.write(chunk, () => {
        this.pending--;
        if (this.pending === 0) this.wake();
      });
      if (!ok && !this.waitingDrain) {
        this.waitingDrain = true;
        from.pause();
        to.once('drain', () => {
          this.waitingDrain = false;
          this.resume(); // not if held: a drain must not undo a hold
        });
      }
    });
    from.on('end', () => to.end()); // half-close travels through
    to.once('close', () => this.wake());
    this.resume();
  }

  resume(): void {
    if (!this.waitingDrain && !this.held()) this.from.resume();
  }

  /** Pausing stops 'data' at once; a chunk already read was written synchronously in its handler. */
  pause(): void {
    this.from.pause();
  }

  flushed(): Promise<void> {
    if (this.pending === 0 || this.to.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private wake(): void {
    for (const f of this.idle.splice(0)) f();
  }
}

/** Pipes a↔b; any abnormal close (error, destroy before both ends finished) destroys the other side. */
function splice(a: net.Socket, b: net.Socket, held: () => boolean, onClosed: (up: Flow, down: Flow) => void): Flow {
  const up = new Flow(a, b, held);
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
      if (nl < 0 || nl >= MAX_LINE) {
        s.destroy();
        return done(undefined);
      }
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
  try {
    const v: unknown = JSON.parse(line);
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

const errors = new WeakMap<net.Socket, Error>();
const failure = (a: net.Socket, b: net.Socket) => {
  const err = errors.get(a) ?? errors.get(b);
  return err ? ` (${err.message})` : '';
};
const where = (t: TunnelTarget) => (t.kind === 'unix' ? t.path : `${t.host}:${t.port}`);

/** Destination side: authenticates each TLS connection's hello and pipes it to `targets[channel]`. */
export async function startTunnelServer(opts: {
  listenHost: string; port?: number; token: string; targets: Record<string, TunnelTarget>; log?: Log;
}): Promise<TunnelServer> {
  if (!opts.token) throw new FerryError(ErrorTypes.BadInput, 'the stream tunnel needs a non-empty token');
  const log = opts.log ?? (() => {});
  const cert = await generateSelfSignedCert(opts.listenHost);
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('error', (err) => errors.set(s, err)); // reported by the close line; no unhandled 'error'
    s.once('close', () => sockets.delete(s));
  };
  let live = 0;
  const server = tls.createServer({ key: cert.keyPem, cert: cert.certPem, minVersion: 'TLSv1.2', allowHalfOpen: true, noDelay: true });
  server.on('tlsClientError', (err, s) => log(`tunnel: TLS handshake from ${s.remoteAddress} failed: ${err.message}`));
  server.on('secureConnection', (sock: tls.TLSSocket) => void (async () => {
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
      const err = new FerryError(ErrorTypes.AuthFailed, 'the tunnel token is wrong: this tunnel belongs to another migration');
      return refuse(err.type, err.message);
    }
    const channel = typeof hello.channel === 'string' ? hello.channel : '';
    const target = Object.hasOwn(opts.targets, channel) ? opts.targets[channel] : undefined;
    if (!target) return refuse(ErrorTypes.BadInput, `unknown tunnel channel ${JSON.stringify(channel)}`);
    const t = target.kind === 'unix'
      ? net.connect({ path: target.path, allowHalfOpen: true })
      : net.connect({ host: target.host, port: target.port, allowHalfOpen: true, noDelay: true });
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
  const port = (server.address() as net.AddressInfo).port;
  return {
    endpoint: { host: opts.listenHost, port, token: opts.token, certPem: cert.certPem },
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
  endpoint: TunnelEndpoint; listeners: Array<{ channel: string; listen: TunnelListen }>; log?: Log;
}): Promise<TunnelClient> {
  const { endpoint: ep } = opts;
  const log = opts.log ?? (() => {});
  const channels = new Map<string, { held: boolean; doneBytes: number; flows: Set<Flow>; at?: TunnelListen }>();
  const servers: Array<{ server: net.Server; path?: string }> = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('error', (err) => errors.set(s, err)); // reported by the close line; no unhandled 'error'
    s.once('close', () => sockets.delete(s));
  };
  const need = (channel: string) => {
    const ch = channels.get(channel);
    if (!ch) throw new FerryError(ErrorTypes.BadInput, `no tunnel listener for channel ${JSON.stringify(channel)}`);
    return ch;
  };

  const accept = (channel: string, local: net.Socket) => {
    const ch = need(channel);
    track(local);
    tune(local);
    // allowHalfOpen is honoured by tls.connect (passed to the TLSSocket) but missing from @types/node.
    const tlsOpts = { host: ep.host, port: ep.port, ...pinnedTlsOptions(ep.certPem), minVersion: 'TLSv1.2' as const, allowHalfOpen: true };
    const remote = tls.connect(tlsOpts);
    track(remote);
    let spliced = false;
    const abort = (why: string) => {
      log(`tunnel ${channel}: connection to ${ep.host}:${ep.port} failed: ${why}`);
      local.destroy();
      remote.destroy();
    };
    const timer = setTimeout(() => abort('handshake timed out'), HANDSHAKE_TIMEOUT_MS);
    remote.once('error', (err) => { if (!spliced) abort(err.message); });
    local.once('close', () => { if (!spliced) remote.destroy(); });
    remote.once('secureConnect', async () => {
      tune(remote);
      remote.write(JSON.stringify({ token: ep.token, channel }) + '\n');
      const line = await readLine(remote);
      clearTimeout(timer);
      if (line === undefined) return abort('the tunnel server closed the connection');
      const reply = parseJson(line);
      if (reply.ok !== true) return abort(`refused: ${typeof reply.error === 'string' ? reply.error : line} (${String(reply.type ?? 'no type')})`);
      if (local.destroyed) return remote.destroy();
      spliced = true;
      log(`tunnel ${channel}: open → ${ep.host}:${ep.port}`);
      // `local` was accepted paused (pauseOnConnect): nothing is read from it until here, and not at all while held.
      ch.flows.add(splice(local, remote, () => ch.held, (up, down) => {
        ch.flows.delete(up);
        ch.doneBytes += up.bytes;
        log(`tunnel ${channel}: closed, ${up.bytes} bytes sent, ${down.bytes} bytes received${failure(local, remote)}`);
      }));
    });
  };

  const client: TunnelClient = {
    async hold(channel) {
      const ch = need(channel);
      ch.held = true;
      for (const f of ch.flows) f.pause();
      await Promise.all([...ch.flows].map((f) => f.flushed()));
    },
    release(channel) {
      const ch = need(channel);
      ch.held = false;
      for (const f of ch.flows) f.resume();
    },
    bytesSent(channel) {
      const ch = need(channel);
      return [...ch.flows].reduce((n, f) => n + f.bytes, ch.doneBytes);
    },
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
      if (channels.has(channel)) throw new FerryError(ErrorTypes.BadInput, `tunnel channel ${JSON.stringify(channel)} is listed twice`);
      channels.set(channel, { held: false, doneBytes: 0, flows: new Set() });
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
  const st = await lstat(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!st) return;
  if (!st.isSocket()) throw new FerryError(ErrorTypes.BadInput, `${path} exists and is not a socket; not removing it`);
  const alive = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path });
    probe.once('connect', () => { probe.destroy(); resolve(true); });
    probe.once('error', () => resolve(false));
  });
  if (alive) throw new FerryError(ErrorTypes.DriverError, `${path} is in use by a live listener`, { code: 'EADDRINUSE' });
  await rm(path, { force: true });
}
