// Prometheus metrics of a worker process: Ferry's own (bytes each stream moved, current rates,
// phase durations, pauses, migrations by outcome) plus the Temporal SDK's, on one endpoint.
//
// Ferry's metrics live in a prom-client registry of this process; activities update them through
// the record* functions below (which never throw: a metric must never fail a migration). The
// Temporal SDK's metrics come from its own Prometheus exporter (Rust, inside the SDK's Runtime),
// which installTemporalMetrics binds on a second, local address; GET /metrics on Ferry's server
// returns Ferry's text followed by whatever that exporter serves.
//
// Labels stay low-cardinality on purpose: stream kind, phase, outcome. No migration, instance or
// node ids (one worker process = one scrape target already says which node).
import { createServer, get as httpGet, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Runtime } from '@temporalio/worker';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { PHASES } from '../shared/names.js';
import { isSocketAddress, joinHostPort, splitHostPort } from '../shared/host-port.js';

/** Disk stream kinds as labels: every dirty round counts as `round`. */
export type StreamKind = 'bulk' | 'round' | 'final';
/** How a migration ended (the inventory's outcomes). */
export type MigrationOutcomeLabel = 'succeeded' | 'rolled-back' | 'failed' | 'cancelled';
/** A timeline entry as the workflow records it (src/shared/messages.ts PhaseEvent): `at` is epoch ms. */
export interface TimelineEvent {
  phase: string;
  at: number;
}

/** Ferry's registry (Ferry's metrics and, once a server started, the process's default metrics). */
export const metricsRegistry = new Registry();

const diskBytes = new Counter({
  name: 'ferry_disk_bytes_total',
  help: "Disk bytes this node's sender moved to a destination (payload, before compression), by stream kind (bulk, round, final).",
  labelNames: ['stream_kind'] as const,
  registers: [metricsRegistry],
});

const diskWireBytes = new Counter({
  name: 'ferry_disk_wire_bytes_total',
  help: "Bytes this node's disk sender put on the wire (compressed, frame headers included), by stream kind (bulk, round, final).",
  labelNames: ['stream_kind'] as const,
  registers: [metricsRegistry],
});

const streamRate = new Gauge({
  name: 'ferry_stream_rate_bytes_per_second',
  help: 'Rate of the stream that reported last on this worker, bytes/s, by kind (disk, memory); 0 when no stream runs.',
  labelNames: ['kind'] as const,
  registers: [metricsRegistry],
});

const memoryTransferred = new Gauge({
  name: 'ferry_memory_bytes_transferred',
  help: 'Guest memory bytes the current (or last) memory migration on this worker has transferred so far, as the hypervisor reports it.',
  registers: [metricsRegistry],
});

const phaseDuration = new Histogram({
  name: 'ferry_phase_duration_seconds',
  help: 'Time a finished migration spent in each workflow phase (validate, bulk-copy, dirty-rounds, memory, ...), seconds; one observation per phase per migration.',
  labelNames: ['phase'] as const,
  buckets: [0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600],
  registers: [metricsRegistry],
});

const pauseSeconds = new Histogram({
  name: 'ferry_pause_seconds',
  help: 'How long a migrated guest stayed paused (source paused to destination running), seconds.',
  buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20, 30],
  registers: [metricsRegistry],
});

const migrations = new Counter({
  name: 'ferry_migrations_total',
  help: 'Migrations that finished, by outcome (succeeded, rolled-back, failed, cancelled).',
  labelNames: ['outcome'] as const,
  registers: [metricsRegistry],
});

const STREAM_KINDS: readonly StreamKind[] = ['bulk', 'round', 'final'];
const OUTCOMES: readonly MigrationOutcomeLabel[] = ['succeeded', 'rolled-back', 'failed', 'cancelled'];
const KNOWN_PHASES = new Set<string>([...PHASES, 'rolling-back', 'rolled-back', 'failed']);

// Series exist (at 0) from the start, so a scraper sees the counters before the first migration
// and rate() works from the first increment.
for (const k of STREAM_KINDS) {
  diskBytes.inc({ stream_kind: k }, 0);
  diskWireBytes.inc({ stream_kind: k }, 0);
}
streamRate.set({ kind: 'disk' }, 0);
streamRate.set({ kind: 'memory' }, 0);
for (const o of OUTCOMES) migrations.inc({ outcome: o }, 0);

const nonNegative = (n: number) => Number.isFinite(n) && n > 0;

/**
 * `bulk`, `round`, `round-N` or `final` (the names MigrationProgress.stream uses) as a label;
 * anything else is counted as `other` rather than growing the label set.
 */
export function streamKindLabel(stream: string): StreamKind | 'other' {
  if (stream === 'bulk' || stream === 'final') return stream;
  if (/^round(-\d+)?$/.test(stream)) return 'round';
  return 'other';
}

/**
 * A disk sender's progress since its last report: `deltaBytes` payload and `deltaWireBytes` wire
 * bytes more (increments, not totals), and its current rate in bytes/s.
 */
export function recordDiskProgress(streamKind: StreamKind | (string & {}), deltaBytes: number, deltaWireBytes: number, rateBytesPerSec: number): void {
  const stream_kind = streamKindLabel(streamKind);
  if (nonNegative(deltaBytes)) diskBytes.inc({ stream_kind }, deltaBytes);
  if (nonNegative(deltaWireBytes)) diskWireBytes.inc({ stream_kind }, deltaWireBytes);
  if (Number.isFinite(rateBytesPerSec) && rateBytesPerSec >= 0) streamRate.set({ kind: 'disk' }, rateBytesPerSec);
}

/** A memory migration's progress: bytes transferred so far (a total) and its current rate in bytes/s. */
export function recordMemoryProgress(transferredBytes: number, rateBytesPerSec: number): void {
  if (Number.isFinite(transferredBytes) && transferredBytes >= 0) memoryTransferred.set(transferredBytes);
  if (Number.isFinite(rateBytesPerSec) && rateBytesPerSec >= 0) streamRate.set({ kind: 'memory' }, rateBytesPerSec);
}

/** A stream ended: its kind's rate gauge goes back to 0 (a finished stream has no rate). */
export function recordStreamStopped(kind: 'disk' | 'memory'): void {
  streamRate.set({ kind }, 0);
}

/**
 * A migration finished: counts it by outcome, observes how long it spent in each phase (from
 * consecutive timeline events; a phase entered more than once is summed; the last event, the
 * end, has no duration) and, when given, how long the guest stayed paused.
 */
export function recordMigrationFinished(args: { outcome: MigrationOutcomeLabel; timeline: readonly TimelineEvent[]; pauseMs?: number }): void {
  if (OUTCOMES.includes(args.outcome)) migrations.inc({ outcome: args.outcome });
  const spent = new Map<string, number>();
  const events = args.timeline ?? [];
  for (let i = 0; i + 1 < events.length; i++) {
    const ms = events[i + 1]!.at - events[i]!.at;
    if (!Number.isFinite(ms) || ms < 0) continue;
    const phase = KNOWN_PHASES.has(events[i]!.phase) ? events[i]!.phase : 'other';
    spent.set(phase, (spent.get(phase) ?? 0) + ms);
  }
  for (const [phase, ms] of spent) phaseDuration.observe({ phase }, ms / 1000);
  if (args.pauseMs !== undefined && Number.isFinite(args.pauseMs) && args.pauseMs >= 0) pauseSeconds.observe(args.pauseMs / 1000);
}

let defaultMetricsOn = false;

export interface MetricsServer {
  /** `http://host:port/metrics` with the port actually bound (port 0 resolved). */
  url: string;
  close(): Promise<void>;
}

export interface MetricsServerOptions {
  /** `host:port` to listen on (`[v6]:port` for IPv6); port 0 picks a free one. */
  address: string;
  /** The Temporal SDK exporter's URL (installTemporalMetrics' result), appended to every scrape. */
  temporalMetricsUrl?: string;
  /** How long a scrape waits for the SDK's exporter; default 2000 ms. */
  temporalTimeoutMs?: number;
}

/** Ferry's text plus the SDK's, or Ferry's alone with a comment saying why the SDK's part is missing. */
async function scrape(opts: MetricsServerOptions): Promise<string> {
  const ferry = await metricsRegistry.metrics();
  if (!opts.temporalMetricsUrl) return ferry;
  let sdk: string;
  try {
    sdk = await httpGetText(opts.temporalMetricsUrl, opts.temporalTimeoutMs ?? 2000);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    return `${ferry}\n# Temporal SDK metrics unavailable: ${opts.temporalMetricsUrl}: ${oneLine(why)}\n`;
  }
  // The SDK serves the classic text format; drop an OpenMetrics terminator should one appear.
  sdk = sdk.replace(/^# EOF\s*$/m, '').trimEnd();
  return `${ferry}\n# Temporal SDK metrics from ${opts.temporalMetricsUrl}\n${sdk}\n`;
}

const oneLine = (s: string) => s.replace(/\s+/g, ' ').trim();

// node:http rather than fetch: fetch refuses the WHATWG "bad ports" (6000, 6665-6669, ...), which
// an operator may well pick for the exporter.
function httpGetText(url: string, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = httpGet(url, { timeout: timeoutMs }, (res) => {
      if (res.statusCode !== 200) {
        res.resume();
        reject(new Error(`HTTP ${res.statusCode}`));
        return;
      }
      res.setEncoding('utf8');
      let body = '';
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve(body));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/**
 * Serves GET /metrics on `address`: Ferry's registry, then the Temporal SDK's text from
 * `temporalMetricsUrl` when given. Also turns on prom-client's default process metrics.
 */
export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const hp = splitHostPort(opts.address);
  if (!hp) throw new Error(`metrics address ${JSON.stringify(opts.address)}: expected host:port`);
  if (!defaultMetricsOn) {
    collectDefaultMetrics({ register: metricsRegistry });
    defaultMetricsOn = true;
  }
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
      return;
    }
    scrape(opts).then(
      (text) => {
        res.writeHead(200, { 'content-type': metricsRegistry.contentType });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end(`metrics failed: ${(err as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(hp.port, hp.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://${joinHostPort(hp.host, port)}/metrics`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        // Scrapers keep connections alive; close() alone would wait for them.
        server.closeAllConnections();
      }),
  };
}

let temporalBoundTo: string | undefined;

/**
 * Installs the Temporal SDK Runtime with its Prometheus exporter bound to `bindAddress` (an IP
 * literal and port: the SDK takes no host names) and returns the exporter's URL. Must run before
 * the process creates any NativeConnection or Worker (they instantiate a default Runtime). Once
 * per process: calling again with the same address returns the same URL; another address throws.
 */
export function installTemporalMetrics(bindAddress: string): string {
  const url = `http://${bindAddress}/metrics`;
  if (temporalBoundTo !== undefined) {
    if (temporalBoundTo === bindAddress) return url;
    throw new Error(`the Temporal SDK's metrics are already exported on ${temporalBoundTo}; a process has one Runtime, so not also on ${bindAddress}`);
  }
  if (!isSocketAddress(bindAddress)) {
    throw new Error(`Temporal metrics address ${JSON.stringify(bindAddress)}: must be an IP address and port (e.g. 127.0.0.1:9465)`);
  }
  try {
    Runtime.install({ telemetryOptions: { metrics: { prometheus: { bindAddress } } } });
  } catch (err) {
    throw new Error(`cannot export the Temporal SDK's metrics on ${bindAddress}: ${(err as Error).message}`, { cause: err });
  }
  temporalBoundTo = bindAddress;
  return url;
}
