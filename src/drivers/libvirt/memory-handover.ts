// Memory through libvirt's own migration (`virsh migrate --live`), with Ferry deciding the moment
// of the pause. libvirt 9.0 gives no public way to stop between its phases, so Ferry carries both
// host-to-host streams (virsh's RPC to the destination libvirtd, QEMU's migration stream) through
// its own TLS tunnel (stream-tunnel.ts) and:
//  1. keeps QEMU from switching over by itself (downtime limit 1 ms) while pre-copy runs;
//  2. when what is left fits the budget, holds the migration stream and suspends the source:
//     the source QEMU cannot finish, so it stays alive with its disks readable for the final round;
//  3. at switchover, releases the stream: libvirt completes, the destination starts paused
//     (`--suspend`), and `resume` runs it. Even if QEMU converged on its own before the hold,
//     the destination would wait paused, never running ahead of its disks.
// The virsh child and the tunnel live in this worker; if it dies, the stream breaks, libvirt
// aborts the job and resumes the source (its pre-migration state).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { z } from 'zod';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { MemoryProgress } from '../driver.js';
import { startTunnelClient, startTunnelServer, type TunnelClient, type TunnelEndpoint } from './stream-tunnel.js';
import { cleanError, Virsh } from './virsh.js';
import { DowntimeLadder } from '../downtime-ladder.js';

const URI_PREFIX = 'ferry-tunnel:';
const planSchema = z.strictObject({
  tunnel: z.strictObject({ host: z.string().min(1).max(255), port: z.number().int().min(1).max(65535), token: z.string().regex(/^[0-9a-f]{64}$/), certPem: z.string().min(1).max(16384) }),
  memoryPort: z.number().int().min(1024).max(65535),
});
export type MemoryPlan = z.infer<typeof planSchema>;

/** The destination's side of the handover, as one opaque string the workflow carries. */
export function encodeMemoryUri(plan: MemoryPlan): string {
  return URI_PREFIX + Buffer.from(JSON.stringify(plan)).toString('base64url');
}

export function decodeMemoryUri(uri: string): MemoryPlan {
  if (!uri.startsWith(URI_PREFIX)) throw new FerryError(ErrorTypes.BadInput, `not a libvirt memory URI: ${uri.slice(0, 40)}`);
  try {
    return planSchema.parse(JSON.parse(Buffer.from(uri.slice(URI_PREFIX.length), 'base64url').toString('utf8')));
  } catch (e) {
    throw new FerryError(ErrorTypes.BadInput, `malformed libvirt memory URI: ${(e as Error).message.slice(0, 200)}`);
  }
}

// --- destination ---

const servers = new Map<string, { plan: MemoryPlan; close(): Promise<void> }>();

async function freeLoopbackPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

/** The tunnel's destination end: libvirt's socket and the port the incoming QEMU will listen on. Idempotent per instance. */
export async function openDestinationTunnel(id: string, opts: { listenHost: string; libvirtSocket: string; log?: (l: string) => void }): Promise<MemoryPlan> {
  const have = servers.get(id);
  if (have) return have.plan;
  const memoryPort = await freeLoopbackPort();
  const server = await startTunnelServer({
    listenHost: opts.listenHost,
    token: randomBytes(32).toString('hex'),
    targets: { libvirt: { kind: 'unix', path: opts.libvirtSocket }, memory: { kind: 'tcp', host: '127.0.0.1', port: memoryPort } },
    log: opts.log,
  });
  const plan: MemoryPlan = { tunnel: server.endpoint, memoryPort };
  servers.set(id, { plan, close: () => server.close() });
  return plan;
}

export async function closeDestinationTunnel(id: string): Promise<void> {
  const s = servers.get(id);
  servers.delete(id);
  await s?.close();
}

// --- source ---

interface MigrationInfo {
  status?: string;
  'total-time'?: number;
  ram?: { transferred: number; remaining: number; total: number; 'dirty-pages-rate'?: number; 'dirty-sync-count'?: number; mbps?: number };
  'error-desc'?: string;
}

interface Inflight {
  child: ChildProcess;
  exit: Promise<{ code: number | null; stderr: string }>;
  tunnel: TunnelClient;
  startedAt: number;
  pausedAt?: number;
  /** The stream's rate once the downtime limit is set (MiB/s; the caller's cap, or unlimited). */
  bandwidthMiB: number;
  pausing?: Promise<void>;
  /** This job's migration has been seen `active` (before that, query-migrate speaks of an older one). */
  seenActive?: boolean;
  /** QEMU stopped the source for the switchover on its own (see migrateUntilPaused). */
  selfStopped?: boolean;
  /** The destination's libvirtd, through the tunnel. */
  destination: Virsh;
  /** Memory QEMU still had to send when the source paused. */
  remainingAtPause?: number;
  transferred: number;
}

const inflight = new Map<string, Inflight>();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function memoryError(msg: string): FerryError {
  return new FerryError(ErrorTypes.MemoryMigrationFailed, msg);
}

/** What the tunnel keeps back of the memory stream: more than QEMU's closing EOF and device description. */
const TAIL_GUARD_BYTES = 1024 * 1024;

/** "No cap" for migrate-setspeed: 1 TiB/s. */
const UNLIMITED_MIB = 1024 * 1024;

/** Pre-copy passes after which a guest that still does not fit the budget is given up on. */
const MAX_ITERATIONS = 40;

export interface SourceMigrationOptions {
  dir: string;
  /** The destination's domain XML when it differs from the source's (disks mapped elsewhere). */
  xmlFile?: string;
  downtimeMs: number;
  bandwidthBytesPerSec?: number;
  pollMs?: number;
  onProgress?: (p: MemoryProgress) => void;
  log?: (l: string) => void;
}

/** Starts (or, on a retry, rejoins) the migration and returns once the source is paused and held. */
export async function migrateUntilPaused(virsh: Virsh, domain: string, memoryUri: string, o: SourceMigrationOptions): Promise<void> {
  let m = inflight.get(domain);
  if (!m) m = await start(virsh, domain, decodeMemoryUri(memoryUri), o);
  if (m.pausing) return m.pausing;
  const qmp = virsh.qmp(domain);
  let limited = false;
  // Ferry's own switchover threshold climbs the same ladder QEMU's limit does for the QEMU driver.
  const ladder = new DowntimeLadder(o.downtimeMs);
  for (;;) {
    // Fast until the downtime limit is in place (the window in which QEMU could switch over alone).
    const done = await Promise.race([m.exit.then((e) => e), sleep(limited ? (o.pollMs ?? 200) : 25).then(() => null)]);
    if (done) {
      inflight.delete(domain);
      await m.tunnel.close();
      // Guarded against above; should it happen, the guest's only running copy waits paused on
      // the destination (abortDestination refuses to remove it) for the operator.
      if (done.code === 0) throw memoryError(`libvirt finished migrating ${domain} before Ferry paused it: it waits paused on the destination, whose disks may miss the last writes; the source disks are intact and stopped`);
      throw memoryError(`virsh migrate ${domain} failed: ${cleanError(done.stderr)}`);
    }
    const info = await qmp.execute<MigrationInfo>('query-migrate').catch(() => ({}) as MigrationInfo);
    // Until this job's migration has been seen running, query-migrate still reports the QEMU's
    // previous one: `completed` for a QEMU that came in by migration, `failed` after an abort.
    if (info.status === 'active') m.seenActive = true;
    if (!m.seenActive) continue;
    if (info.status === 'active' && !limited) {
      // The job started at 1 MiB/s, so QEMU cannot reach its first convergence check before the
      // 1 ms limit is in place (libvirt 9.0 takes no downtime before the job exists); only then
      // does the stream get its real rate. A limit that cannot be set stops the migration.
      await virsh.run(['migrate-setmaxdowntime', '--domain', domain, '--downtime', '1']);
      await virsh.run(['migrate-setspeed', '--domain', domain, '--bandwidth', String(m.bandwidthMiB)]);
      limited = true;
    }
    const rate = info.ram?.mbps !== undefined ? Math.round((info.ram.mbps * 1e6) / 8) : undefined;
    const iteration = info.ram?.['dirty-sync-count'] ?? 0;
    m.transferred = info.ram?.transferred ?? m.transferred;
    o.onProgress?.({
      status: info.status ?? 'setup',
      transferredBytes: m.transferred,
      remainingBytes: info.ram?.remaining ?? 0,
      totalBytes: info.ram?.total ?? 0,
      dirtyPagesRate: info.ram?.['dirty-pages-rate'],
      iteration,
      rateBytesPerSec: rate,
    });
    if (info.status === 'failed') throw memoryError(`memory migration of ${domain} failed: ${info['error-desc'] ?? 'no reason given'}`);
    if (info.status === 'pre-switchover' || info.status === 'device') {
      // QEMU is switching over by itself (a guest idle enough for a pass to leave nothing to
      // send): it has stopped the guest. Hold the stream at once, as Ferry's own pause does; QEMU
      // then blocks writing its last pages before it inactivates the disks, so the final round
      // reads them as usual. The tail guard already keeps the end from the destination; should
      // QEMU have inactivated the disks all the same, the final round fails and the abort puts
      // the source back.
      m.pausing ??= (async () => {
        await m.tunnel.hold('memory');
        m.pausedAt = Date.now();
        m.remainingAtPause = info.ram?.remaining ?? 0;
        o.log?.(`libvirt: QEMU stopped ${domain} for the switchover by itself; the stream is held`);
      })();
      await m.pausing;
      return;
    }
    if (info.status === 'completed') {
      m.pausing ??= (async () => {
        m.pausedAt ??= Date.now();
        m.selfStopped = true;
        o.log?.(`libvirt: QEMU switched ${domain} over by itself; its last section is held, the final round reads the stopped disks whole`);
      })();
      await m.pausing;
      return;
    }
    if (info.status !== 'active' || iteration < 2 || !limited) continue;
    const remaining = info.ram?.remaining ?? Infinity;
    ladder.observe(iteration, remaining);
    const fits = remaining <= Math.max(256 * 1024, ((rate ?? 0) * ladder.currentMs) / 1000);
    if (!fits && (iteration < MAX_ITERATIONS || !ladder.atBudget)) continue;
    if (!fits) throw new FerryError(ErrorTypes.WontConverge, `${domain} dirties memory faster than the link carries it: ${remaining} bytes left after ${iteration} passes`);
    // One pause per migration, even if a retried activity polls beside the first one.
    m.pausing ??= (async () => {
      await m.tunnel.hold('memory');
      await virsh.run(['suspend', '--domain', domain]);
      m.pausedAt = Date.now();
      m.remainingAtPause = remaining;
      o.log?.(`libvirt: ${domain} paused with ${remaining} bytes of memory left, stream held`);
    })();
    await m.pausing;
    return;
  }
}

async function start(virsh: Virsh, domain: string, plan: MemoryPlan, o: SourceMigrationOptions): Promise<Inflight> {
  const libvirtSocket = join(o.dir, 'dest-libvirt.sock');
  const tunnel = await startTunnelClient({
    endpoint: plan.tunnel as TunnelEndpoint,
    listeners: [
      { channel: 'libvirt', listen: { kind: 'unix', path: libvirtSocket } },
      // The guard: the destination never has QEMU's last section (its EOF, then the device
      // description) until Ferry's switchover releases it, whoever decided to switch over.
      { channel: 'memory', listen: { kind: 'tcp', host: '127.0.0.1', port: plan.memoryPort }, guardTail: TAIL_GUARD_BYTES },
    ],
    log: o.log,
  });
  const args = [
    '-q', '-c', virsh.uri, 'migrate', '--live', '--unsafe', '--suspend', '--persistent', '--auto-converge',
    '--domain', domain,
    '--desturi', `qemu+unix:///system?socket=${libvirtSocket}`,
    // Both ends see 127.0.0.1: the destination QEMU listens there, the source connects to the
    // tunnel's listener there (port free on both hosts, checked by the listen above).
    '--migrateuri', `tcp://127.0.0.1:${plan.memoryPort}`,
  ];
  if (o.xmlFile) args.push('--xml', o.xmlFile, '--persistent-xml', o.xmlFile);
  args.push('--bandwidth', '1');
  const bandwidthMiB = o.bandwidthBytesPerSec && o.bandwidthBytesPerSec > 0 ? Math.max(1, Math.floor(o.bandwidthBytesPerSec / (1024 * 1024))) : UNLIMITED_MIB;
  const child = spawn('virsh', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4096)));
  const exit = new Promise<{ code: number | null; stderr: string }>((resolve) => {
    child.once('error', (e) => resolve({ code: -1, stderr: e.message }));
    child.once('close', (code) => resolve({ code, stderr }));
  });
  const destination = new Virsh(`qemu+unix:///system?socket=${libvirtSocket}`);
  const m: Inflight = { child, exit, tunnel, startedAt: Date.now(), transferred: 0, bandwidthMiB, destination };
  inflight.set(domain, m);
  return m;
}

/** Lets libvirt finish: the held stream flows, the destination ends paused. */
export async function releaseAndFinish(virsh: Virsh, domain: string): Promise<{ totalMs: number; downtimeMs?: number; transferredBytes: number; note: string }> {
  const m = inflight.get(domain);
  if (!m) throw memoryError(`no migration of ${domain} is in flight in this worker (it restarted?); the source resumes when libvirt notices the broken stream`);
  const releasedAt = Date.now();
  m.tunnel.release('memory');
  m.tunnel.releaseTail('memory');
  // For the note: when the source QEMU has sent everything, and when the destination's libvirt
  // has finished (its domain paused for Ferry, no longer incoming); the rest is the source's Confirm.
  let sentAt: number | undefined;
  let readyAt: number | undefined;
  const qmp = virsh.qmp(domain);
  const watchSent = (async () => {
    while (sentAt === undefined && m.child.exitCode === null) {
      const info = await qmp.execute<MigrationInfo>('query-migrate').catch(() => null);
      if (!info || info.status === 'completed') sentAt = Date.now();
      else await sleep(50);
    }
  })();
  const watchReady = (async () => {
    while (readyAt === undefined && m.child.exitCode === null) {
      const st = await m.destination.domstate(domain).catch(() => null);
      if (st?.state === 'paused' && !/migrat|incoming|starting/.test(st.reason)) readyAt = Date.now();
      else await sleep(50);
    }
  })();
  const done = await m.exit;
  const finishedAt = Date.now();
  await Promise.all([watchSent, watchReady]);
  inflight.delete(domain);
  await m.tunnel.close();
  if (done.code !== 0) throw memoryError(`switchover of ${domain} failed: ${cleanError(done.stderr)}`);
  const held = m.pausedAt ? releasedAt - m.pausedAt : 0;
  const note = `libvirt: source paused with ${m.remainingAtPause ?? 0} bytes of memory left; stream held ${held} ms (final disk round); QEMU sent the rest in ${(sentAt ?? finishedAt) - releasedAt} ms; the destination was ready ${readyAt ? `${readyAt - releasedAt} ms` : 'only'} after the release; libvirt finished ${finishedAt - releasedAt} ms after the release`;
  return { totalMs: finishedAt - m.startedAt, downtimeMs: m.pausedAt ? finishedAt - m.pausedAt : undefined, transferredBytes: m.transferred, note };
}

/** Aborts the migration if one runs (ours or one a dead worker left); the caller resumes the source. */
export async function abortMigration(virsh: Virsh, domain: string): Promise<void> {
  const m = inflight.get(domain);
  await virsh.run(['domjobabort', '--domain', domain]).catch(() => undefined);
  if (!m) return;
  // Closing the tunnel with its tail still guarded: the destination never completes, libvirt's
  // Finish there fails and the source is put back as it was, even if QEMU had switched over.
  await m.tunnel.close();
  const timer = setTimeout(() => m.child.kill('SIGTERM'), 60_000);
  try {
    await m.exit;
  } finally {
    clearTimeout(timer);
    inflight.delete(domain);
  }
}

/** Whether QEMU stopped the source by itself: its disks are inactive, the final round reads the files whole. */
export function sourceStoppedItself(domain: string): boolean {
  return inflight.get(domain)?.selfStopped === true;
}

export function migrationInFlight(domain: string): boolean {
  return inflight.has(domain);
}
