// The libvirt stream tunnel over real sockets (127.0.0.1 and unix sockets in a temp dir): bytes
// round-trip on two channels, bad tokens / channels / certificates / hellos are refused before any
// target connection, and a held channel forwards nothing until released, then completes intact.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import net from 'node:net';
import tls from 'node:tls';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, lstatSync } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTunnelClient, startTunnelServer, type TunnelClient, type TunnelTarget } from '../../src/drivers/libvirt/stream-tunnel.js';
import { generateSelfSignedCert, pinnedTlsOptions } from '../../src/dataplane/tls-cert.js';
import { ErrorTypes, FerryError } from '../../src/shared/errors.js';

const MiB = 1024 * 1024;
const TOKEN = 'tunnel-test-token';
let tmp = '';
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'ferry-tunnel-'));
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Waits for `cond`; the generous deadline only turns a hang into a readable failure. */
async function until(cond: () => boolean, what = cond.toString()): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`still not true after 30 s: ${what}`);
    await sleep(10);
  }
}

/** A target server: echoes (or just swallows) what it gets, and counts connections and bytes. */
async function target(kind: 'tcp' | 'unix', mode: 'echo' | 'sink', name = kind): Promise<{
  at: TunnelTarget; connections: number; bytes: number; received: Promise<Buffer>;
}> {
  let resolveReceived!: (b: Buffer) => void;
  const t = { at: undefined as unknown as TunnelTarget, connections: 0, bytes: 0, received: new Promise<Buffer>((r) => (resolveReceived = r)) };
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (s) => {
    t.connections++;
    sockets.add(s);
    s.on('error', () => {});
    const parts: Buffer[] = [];
    s.on('data', (c: Buffer) => { t.bytes += c.length; if (mode === 'sink') parts.push(c); });
    if (mode === 'echo') s.pipe(s);
    else s.on('end', () => { resolveReceived(Buffer.concat(parts)); s.end(); });
  });
  const at = kind === 'unix' ? join(tmp, `${name}-target.sock`) : { host: '127.0.0.1', port: 0 };
  await new Promise<void>((r) => server.listen(at, r));
  t.at = kind === 'unix' ? { kind: 'unix', path: at as string } : { kind: 'tcp', host: '127.0.0.1', port: (server.address() as net.AddressInfo).port };
  cleanups.push(() => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }));
  return t;
}

async function tunnel(targets: Record<string, TunnelTarget>, log: string[] = []) {
  const server = await startTunnelServer({ listenHost: '127.0.0.1', token: TOKEN, targets, log: (l) => log.push(`server: ${l}`) });
  cleanups.push(() => server.close());
  return server;
}

async function client(opts: Parameters<typeof startTunnelClient>[0]): Promise<TunnelClient> {
  const c = await startTunnelClient(opts);
  cleanups.push(() => c.close());
  return c;
}

function connectLocal(c: TunnelClient, channel: string): net.Socket {
  const at = c.listenAddress(channel);
  const s = net.connect(at.kind === 'unix' ? { path: at.path, allowHalfOpen: true } : { host: at.host, port: at.port, allowHalfOpen: true });
  s.on('error', () => {});
  return s;
}

/** Writes `payload` in 64 KiB pieces honouring backpressure (and a 1 ms pause per piece while `pace.on`), ends, and collects what comes back. */
function exchange(s: net.Socket, payload: Buffer, pace = { on: false }): { sent: Promise<void>; back: Promise<Buffer> } {
  const parts: Buffer[] = [];
  const back = new Promise<Buffer>((resolve, reject) => {
    s.on('data', (c: Buffer) => parts.push(c));
    s.on('end', () => resolve(Buffer.concat(parts)));
    s.on('close', () => reject(new Error('closed before end')));
  });
  back.catch(() => {}); // a test that fails early must not also leave an unhandled rejection
  const sent = (async () => {
    for (let off = 0; off < payload.length; off += 64 * 1024) {
      if (!s.write(payload.subarray(off, off + 64 * 1024))) await new Promise((r) => s.once('drain', r));
      if (pace.on) await sleep(1);
    }
    s.end();
  })();
  return { sent, back };
}

/** The tunnel shut `s` (EOF or reset): a half-open local socket sees 'end' and may never close by itself. */
const shut = (s: net.Socket) => new Promise<void>((r) => (s.closed || s.readableEnded ? r() : s.once('end', r).once('close', r).resume()));

describe('stream tunnel', () => {
  it('round-trips 32 MiB byte-identical on a tcp and a unix channel at once', async () => {
    const [tcpEcho, unixEcho] = await Promise.all([target('tcp', 'echo'), target('unix', 'echo')]);
    const log: string[] = [];
    const server = await tunnel({ mem: tcpEcho.at, rpc: unixEcho.at }, log);
    const c = await client({
      endpoint: server.endpoint, log: (l) => log.push(`client: ${l}`),
      listeners: [
        { channel: 'mem', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } },
        { channel: 'rpc', listen: { kind: 'unix', path: join(tmp, 'rpc.sock') } },
      ],
    });
    const payloads = [randomBytes(32 * MiB), randomBytes(32 * MiB)];
    const runs = (['mem', 'rpc'] as const).map((ch, i) => exchange(connectLocal(c, ch), payloads[i]));
    const backs = await Promise.all(runs.map((r) => r.back));
    expect(sha(backs[0])).toBe(sha(payloads[0]));
    expect(sha(backs[1])).toBe(sha(payloads[1]));
    expect(c.bytesSent('mem')).toBe(32 * MiB);
    expect(c.bytesSent('rpc')).toBe(32 * MiB);
    expect([tcpEcho.connections, unixEcho.connections]).toEqual([1, 1]);
    await until(() => server.connections() === 0); // half-closes ended every tunnel connection
    await until(() => log.filter((l) => l.includes('closed')).length === 4);
    expect(log.filter((l) => l.includes('open'))).toHaveLength(4);
    expect(log.some((l) => /client: tunnel mem: closed, 33554432 bytes sent, 33554432 bytes received/.test(l))).toBe(true);
  });

  it('refuses a wrong token and an unknown channel before touching any target', async () => {
    const echo = await target('tcp', 'echo');
    const log: string[] = [];
    const server = await tunnel({ mem: echo.at }, log);
    const errs: FerryError[] = [];
    const onError = (_ch: string, e: FerryError) => errs.push(e);
    const bad = await client({ endpoint: { ...server.endpoint, token: 'not-the-token' }, listeners: [{ channel: 'mem', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } }], log: (l) => log.push(`client: ${l}`), onError });
    const s1 = connectLocal(bad, 'mem');
    s1.write('hello');
    await shut(s1);
    const other = await client({ endpoint: server.endpoint, listeners: [{ channel: 'disk', listen: { kind: 'unix', path: join(tmp, 'disk.sock') } }], log: (l) => log.push(`client: ${l}`), onError });
    const s2 = connectLocal(other, 'disk');
    s2.write('hello');
    await shut(s2);
    expect(echo.connections).toBe(0);
    expect(server.connections()).toBe(0);
    expect(log.some((l) => l.startsWith('client: tunnel mem') && l.includes('token is wrong') && l.includes(ErrorTypes.AuthFailed))).toBe(true);
    expect(log.some((l) => l.startsWith('client: tunnel disk') && l.includes('unknown tunnel channel "disk"'))).toBe(true);
    expect(errs.map((e) => e.type)).toEqual([ErrorTypes.AuthFailed, ErrorTypes.BadInput]);
  });

  it('holds a channel: nothing reaches the target until release, the other channel keeps flowing, the stream ends intact', async () => {
    const [sink, echo] = await Promise.all([target('tcp', 'sink'), target('unix', 'echo')]);
    const server = await tunnel({ mem: sink.at, rpc: echo.at });
    const c = await client({
      endpoint: server.endpoint,
      listeners: [
        { channel: 'mem', listen: { kind: 'unix', path: join(tmp, 'mem.sock') } },
        { channel: 'rpc', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } },
      ],
    });
    const payload = randomBytes(96 * MiB);
    // Paced first, so the tunnel is reading (not waiting for a drain) when the first hold comes; then flat out.
    const pace = { on: true };
    const mem = exchange(connectLocal(c, 'mem'), payload, pace);
    const holdAndCheck = async () => {
      await c.hold('mem');
      const sent = c.bytesSent('mem');
      expect(sent).toBeLessThan(payload.length);
      // What was already on the wire when hold resolved still lands; after that, nothing more.
      await until(() => sink.bytes === sent);
      await sleep(300);
      expect(sink.bytes).toBe(sent);
      expect(c.bytesSent('mem')).toBe(sent);
      return sent;
    };
    await until(() => sink.bytes >= 4 * MiB);
    let sent = await holdAndCheck();
    // rpc is not held: a round trip works while mem is.
    const small = randomBytes(2 * MiB);
    expect(sha(await exchange(connectLocal(c, 'rpc'), small).back)).toBe(sha(small));
    expect(sink.bytes).toBe(sent);
    c.release('mem');
    await until(() => sink.bytes > sent);
    pace.on = false;
    await until(() => sink.bytes >= sent + 16 * MiB);
    sent = await holdAndCheck();
    c.release('mem');
    await mem.sent;
    expect(sha(await sink.received)).toBe(sha(payload));
    await mem.back; // the sink's end travels back to the local client
    expect(c.bytesSent('mem')).toBe(payload.length);
  });

  it('guards a tail: the last bytes and the end never reach the target until releaseTail, then all of it does, intact', async () => {
    const sink = await target('tcp', 'sink');
    const server = await tunnel({ mem: sink.at });
    const guard = 1 * MiB;
    const c = await client({ endpoint: server.endpoint, listeners: [{ channel: 'mem', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 }, guardTail: guard }] });
    const payload = randomBytes(8 * MiB + 12345);
    let ended = false;
    void sink.received.then(() => (ended = true));
    const mem = exchange(connectLocal(c, 'mem'), payload);
    await mem.sent; // the local client has written everything and ended
    await until(() => sink.bytes === payload.length - guard);
    await sleep(300);
    expect(sink.bytes, 'the guarded tail stays back').toBe(payload.length - guard);
    expect(ended, 'and so does the end').toBe(false);
    c.releaseTail('mem');
    expect(sha(await sink.received)).toBe(sha(payload));
    await mem.back;
  });

  it('fails the connection when the server certificate is not the pinned one', async () => {
    const echo = await target('tcp', 'echo');
    const log: string[] = [];
    const server = await tunnel({ mem: echo.at }, log);
    const other = await generateSelfSignedCert('127.0.0.1');
    const errs: FerryError[] = [];
    const c = await client({
      endpoint: { ...server.endpoint, certPem: other.certPem }, listeners: [{ channel: 'mem', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } }],
      log: (l) => log.push(`client: ${l}`), onError: (_ch, e) => errs.push(e),
    });
    const s = connectLocal(c, 'mem');
    s.write('hello');
    await shut(s);
    expect(echo.connections).toBe(0);
    expect(log.some((l) => l.startsWith('client: tunnel mem: connection') && l.includes('failed'))).toBe(true);
    expect(errs.map((e) => e.type)).toEqual([ErrorTypes.AuthFailed]);
    expect(server.connections()).toBe(0);
  });

  it('drops a client whose hello line is longer than 4 KiB, with or without a newline', async () => {
    const echo = await target('tcp', 'echo');
    const server = await tunnel({ mem: echo.at });
    const ep = server.endpoint;
    for (const hello of [Buffer.alloc(5000, 'x'), Buffer.from(JSON.stringify({ token: TOKEN, channel: 'mem', pad: 'x'.repeat(5000) }) + '\n')]) {
      const s = tls.connect({ host: ep.host, port: ep.port, ...pinnedTlsOptions(ep.certPem) });
      s.on('error', () => {});
      const got: Buffer[] = [];
      s.on('data', (d: Buffer) => got.push(d));
      s.once('secureConnect', () => s.write(hello));
      await shut(s);
      expect(Buffer.concat(got).length).toBe(0); // dropped: not even an error line
    }
    expect(echo.connections).toBe(0);
  });

  it('replaces a stale unix socket, removes it on close, and reports a busy tcp port as a FerryError', async () => {
    const path = join(tmp, 'stale.sock');
    const old = net.createServer();
    await new Promise<void>((r) => old.listen(join(tmp, 'tmp.sock'), r));
    await rename(join(tmp, 'tmp.sock'), path); // closing `old` now leaves `path` behind with no listener
    await new Promise<void>((r) => old.close(() => r()));
    expect(lstatSync(path).isSocket()).toBe(true);
    const echo = await target('tcp', 'echo');
    const server = await tunnel({ mem: echo.at });
    const c = await startTunnelClient({ endpoint: server.endpoint, listeners: [{ channel: 'mem', listen: { kind: 'unix', path } }] });
    const small = randomBytes(1000);
    expect(sha(await exchange(connectLocal(c, 'mem'), small).back)).toBe(sha(small));
    await c.close();
    expect(existsSync(path)).toBe(false);

    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => busy.close(() => r())));
    const port = (busy.address() as net.AddressInfo).port;
    const err = await startTunnelClient({ endpoint: server.endpoint, listeners: [{ channel: 'mem', listen: { kind: 'tcp', host: '127.0.0.1', port } }] })
      .then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).message).toMatch(/already in use/);
  });
});
