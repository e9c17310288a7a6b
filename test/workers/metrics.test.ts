// The worker's metrics endpoint over real HTTP: Ferry's registry, the merge with the Temporal SDK's
// exporter, and the config section that turns it on.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  installTemporalMetrics,
  recordDiskProgress,
  recordMemoryProgress,
  recordMigrationFinished,
  startMetricsServer,
  type MetricsServer,
} from '../../src/workers/metrics.js';
import { loadConfig } from '../../src/config/load.js';

/** The value of one sample in Prometheus text format (labels matched exactly, in any order). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line.trim() === '') continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got: Record<string, string> = {};
    for (const [, k, v] of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) got[k!] = v!;
    if (Object.keys(got).length !== Object.keys(labels).length) continue;
    if (Object.entries(labels).every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
  return res.text();
}

/** A port nothing listens on (bound, read, released). */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function start(opts: { temporalMetricsUrl?: string } = {}): Promise<MetricsServer> {
  const server = await startMetricsServer({ address: '127.0.0.1:0', ...opts });
  cleanups.push(() => server.close());
  return server;
}

describe('worker metrics endpoint', () => {
  it('serves on the real port and the disk byte counters grow between scrapes', async () => {
    const server = await start();
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(server.url).not.toMatch(/:0\/metrics$/);

    const first = await scrape(server.url);
    for (const name of [
      'ferry_disk_bytes_total',
      'ferry_disk_wire_bytes_total',
      'ferry_stream_rate_bytes_per_second',
      'ferry_memory_bytes_transferred',
      'ferry_phase_duration_seconds',
      'ferry_pause_seconds',
      'ferry_migrations_total',
    ]) {
      expect(first).toMatch(new RegExp(`^# HELP ${name} \\S`, 'm'));
    }
    // prom-client's default process metrics come along.
    expect(sample(first, 'process_cpu_user_seconds_total')).toBeGreaterThanOrEqual(0);
    const bulk0 = sample(first, 'ferry_disk_bytes_total', { stream_kind: 'bulk' });
    const wire0 = sample(first, 'ferry_disk_wire_bytes_total', { stream_kind: 'bulk' });
    expect(bulk0).toBeGreaterThanOrEqual(0);
    expect(wire0).toBeGreaterThanOrEqual(0);

    recordDiskProgress('bulk', 4 << 20, 3 << 20, 50e6);
    recordDiskProgress('bulk', 1 << 20, 1 << 19, 40e6);
    recordDiskProgress('round-2', 65536, 40000, 10e6);
    recordMemoryProgress(123 << 20, 80e6);

    const second = await scrape(server.url);
    expect(sample(second, 'ferry_disk_bytes_total', { stream_kind: 'bulk' })).toBe(bulk0! + (5 << 20));
    expect(sample(second, 'ferry_disk_wire_bytes_total', { stream_kind: 'bulk' })).toBe(wire0! + (3 << 20) + (1 << 19));
    expect(sample(second, 'ferry_disk_bytes_total', { stream_kind: 'round' })).toBeGreaterThanOrEqual(65536);
    expect(sample(second, 'ferry_stream_rate_bytes_per_second', { kind: 'disk' })).toBe(10e6);
    expect(sample(second, 'ferry_stream_rate_bytes_per_second', { kind: 'memory' })).toBe(80e6);
    expect(sample(second, 'ferry_memory_bytes_transferred')).toBe(123 << 20);
  });

  it('recordMigrationFinished counts the outcome and observes phase durations and the pause', async () => {
    const server = await start();
    const t0 = 1_700_000_000_000;
    recordMigrationFinished({
      outcome: 'succeeded',
      timeline: [
        { phase: 'validate', at: t0 },
        { phase: 'bulk-copy', at: t0 + 2_000 },
        { phase: 'dirty-rounds', at: t0 + 32_000 },
        { phase: 'memory', at: t0 + 40_000 },
        { phase: 'resume', at: t0 + 45_000 },
        { phase: 'resume', at: t0 + 45_500 }, // a second note in the same phase: summed, one observation
        { phase: 'done', at: t0 + 46_000 },
      ],
      pauseMs: 750,
    });
    const text = await scrape(server.url);
    expect(sample(text, 'ferry_migrations_total', { outcome: 'succeeded' })).toBe(1);
    expect(sample(text, 'ferry_migrations_total', { outcome: 'rolled-back' })).toBe(0);
    expect(sample(text, 'ferry_migrations_total', { outcome: 'failed' })).toBe(0);
    expect(sample(text, 'ferry_phase_duration_seconds_count', { phase: 'bulk-copy' })).toBe(1);
    expect(sample(text, 'ferry_phase_duration_seconds_sum', { phase: 'bulk-copy' })).toBe(30);
    expect(sample(text, 'ferry_phase_duration_seconds_sum', { phase: 'validate' })).toBe(2);
    expect(sample(text, 'ferry_phase_duration_seconds_count', { phase: 'resume' })).toBe(1);
    expect(sample(text, 'ferry_phase_duration_seconds_sum', { phase: 'resume' })).toBe(1);
    // The last event ends the run; it has no duration of its own.
    expect(sample(text, 'ferry_phase_duration_seconds_count', { phase: 'done' })).toBeUndefined();
    expect(sample(text, 'ferry_phase_duration_seconds_bucket', { phase: 'bulk-copy', le: '30' })).toBe(1);
    expect(sample(text, 'ferry_pause_seconds_count')).toBe(1);
    expect(sample(text, 'ferry_pause_seconds_sum')).toBe(0.75);
  });

  it("serves Ferry's part alone, with a comment, when the SDK's exporter is unreachable (closed port)", async () => {
    const port = await closedPort();
    const server = await start({ temporalMetricsUrl: `http://127.0.0.1:${port}/metrics` });
    const text = await scrape(server.url);
    expect(text).toMatch(/^# HELP ferry_disk_bytes_total /m);
    expect(text).toMatch(new RegExp(`^# Temporal SDK metrics unavailable: http://127\\.0\\.0\\.1:${port}/metrics: ECONNREFUSED$`, 'm'));
    expect(sample(text, 'ferry_disk_bytes_total', { stream_kind: 'bulk' })).toBeGreaterThanOrEqual(0);
  });

  it("appends the SDK exporter's text after Ferry's (a stand-in HTTP server for the SDK exporter)", async () => {
    const fake = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' });
      res.end('# HELP temporal_request Client requests\n# TYPE temporal_request counter\ntemporal_request{operation="PollActivityTaskQueue",service_name="temporal-core-sdk"} 7\n');
    });
    await new Promise<void>((r) => fake.listen(0, '127.0.0.1', r));
    cleanups.push(() => closeServer(fake));
    const sdkUrl = `http://127.0.0.1:${(fake.address() as AddressInfo).port}/metrics`;
    const server = await start({ temporalMetricsUrl: sdkUrl });
    const text = await scrape(server.url);
    expect(text.indexOf('# HELP ferry_disk_bytes_total')).toBeGreaterThanOrEqual(0);
    expect(text.indexOf('# HELP temporal_request')).toBeGreaterThan(text.indexOf('# HELP ferry_disk_bytes_total'));
    expect(sample(text, 'temporal_request', { operation: 'PollActivityTaskQueue', service_name: 'temporal-core-sdk' })).toBe(7);
    expect(text).not.toMatch(/unavailable/);
  });

  it('answers 404 off /metrics, and refuses a busy port', async () => {
    const server = await start();
    const res = await fetch(server.url.replace('/metrics', '/'));
    expect(res.status).toBe(404);
    await res.text();
    const busy = server.url.replace(/^http:\/\/|\/metrics$/g, '');
    await expect(startMetricsServer({ address: busy })).rejects.toThrow(/EADDRINUSE/);
  });

  it("installTemporalMetrics binds the SDK's own exporter (real Runtime.install, no Temporal server, so no SDK series yet)", async () => {
    const port = await closedPort();
    const bind = `127.0.0.1:${port}`;
    const sdkUrl = installTemporalMetrics(bind);
    expect(sdkUrl).toBe(`http://${bind}/metrics`);
    // Once per process: the same address again is a no-op, another one is refused.
    expect(installTemporalMetrics(bind)).toBe(sdkUrl);
    expect(() => installTemporalMetrics(`127.0.0.1:${port === 65535 ? port - 1 : port + 1}`)).toThrow(/already exported/);

    const direct = await fetch(sdkUrl);
    expect(direct.status).toBe(200);
    await direct.text();
    const server = await start({ temporalMetricsUrl: sdkUrl });
    const text = await scrape(server.url);
    expect(text).toContain(`# Temporal SDK metrics from ${sdkUrl}`);
    expect(text).not.toMatch(/unavailable/);
  });
});

describe('metrics config section', () => {
  it('is off without the section; on with defaults when present; FERRY_METRICS_ADDRESS sets it', () => {
    expect(loadConfig({ env: {} }).metrics).toBeUndefined();
    expect(loadConfig({ env: { FERRY_METRICS_ADDRESS: '0.0.0.0:9100' } }).metrics).toEqual({ address: '0.0.0.0:9100', temporalAddress: '0.0.0.0:9101' });
    expect(loadConfig({ env: { FERRY_METRICS_ADDRESS: '[::1]:9464' } }).metrics).toEqual({ address: '[::1]:9464', temporalAddress: '[::1]:9465' });
    expect(() => loadConfig({ env: { FERRY_METRICS_ADDRESS: 'localhost:9464' } })).toThrow(/metrics\.temporalAddress: is required/);
    expect(() => loadConfig({ env: { FERRY_METRICS_ADDRESS: 'nohostport' } })).toThrow(/metrics\.address \(from FERRY_METRICS_ADDRESS\): must be host:port/);
  });

  it('reads the section from ferry.yaml', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-metrics-'));
    try {
      const file = (name: string, text: string) => (writeFileSync(join(dir, name), text), join(dir, name));
      expect(loadConfig({ env: {}, file: file('a.yaml', 'metrics: {}\n') }).metrics).toEqual({ address: '127.0.0.1:9464', temporalAddress: '127.0.0.1:9465' });
      expect(loadConfig({ env: {}, file: file('b.yaml', 'metrics:\n  address: node1.example:9100\n  temporalAddress: 127.0.0.1:9200\n') }).metrics).toEqual({
        address: 'node1.example:9100',
        temporalAddress: '127.0.0.1:9200',
      });
      expect(() => loadConfig({ env: {}, file: file('c.yaml', 'metrics:\n  temporalAddress: localhost:9200\n') })).toThrow(/metrics\.temporalAddress: must be an IP address and port/);
      expect(() => loadConfig({ env: {}, file: file('d.yaml', 'metrics:\n  adress: 127.0.0.1:9100\n') })).toThrow(/metrics\.adress: unknown key/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function closeServer(s: Server): Promise<void> {
  return new Promise((r) => {
    s.close(() => r());
    s.closeAllConnections();
  });
}
