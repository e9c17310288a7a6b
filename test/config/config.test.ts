import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, parseBandwidth, parseDuration, parseSize, requireNodeConfig } from '../../src/config/index.js';
import { FerryError } from '../../src/shared/errors.js';

function errorOf(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('expected a FerryError, nothing was thrown');
}

describe('config', () => {
  let dir: string;
  const write = (text: string) => {
    const f = join(dir, 'ferry.yaml');
    writeFileSync(f, text);
    return f;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ferry-cfg-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('gives the documented defaults with no file and no environment', () => {
    const c = loadConfig({ env: {} });
    expect(c.temporal).toEqual({ address: '127.0.0.1:7233', namespace: 'default' });
    expect(c.inventory.path).toBe('/var/lib/ferry/inventory.db');
    expect(c.node).toBeUndefined();
    // No defaults set: the controller falls back to the built-in ones (DEFAULT_OPTIONS).
    expect(c.defaults).toEqual({});
    expect(c.log.level).toBe('info');
  });

  it('reads a YAML file with units, and the environment overrides it', () => {
    const f = write(`
temporal:
  address: 10.0.0.1:7233
  namespace: ferry
  tls: { serverName: temporal.lan, caFile: /etc/ferry/ca.pem }
inventory: { path: /srv/inv.db }
node: { name: node-a, dataAddress: 10.0.1.1 }
defaults:
  codec: none
  chunkSize: 4MiB
  bandwidth: 100Mbit
  downtime: 500ms
  maxRounds: 5
  verify: true
log: { level: debug }
`);
    const c = loadConfig({ file: f, env: {} });
    expect(c.file).toBe(f);
    expect(c.temporal).toEqual({ address: '10.0.0.1:7233', namespace: 'ferry', tls: { serverName: 'temporal.lan', caFile: '/etc/ferry/ca.pem' } });
    expect(c.node).toEqual({ name: 'node-a', dataAddress: '10.0.1.1', stateDir: '/var/lib/ferry/nodes/node-a' });
    expect(c.defaults).toEqual({ codec: 'none', chunkSize: 4 * 2 ** 20, bandwidthBytesPerSec: 12_500_000, downtimeMs: 500, maxRounds: 5, verifyDisk: true });
    const o = loadConfig({
      env: { FERRY_CONFIG: f, FERRY_TEMPORAL_ADDRESS: '127.0.0.1:7999', FERRY_NODE: 'node-b', FERRY_STATE_DIR: '/tmp/x', FERRY_INVENTORY: '/tmp/i.db', FERRY_MAX_ROUNDS: '3', FERRY_TEMPORAL_NAMESPACE: 'ns2', FERRY_DATA_ADDRESS: '127.0.0.9' },
    });
    expect(o.file).toBe(f);
    expect(o.temporal.address).toBe('127.0.0.1:7999');
    expect(o.temporal.namespace).toBe('ns2');
    expect(o.inventory.path).toBe('/tmp/i.db');
    expect(o.node).toEqual({ name: 'node-b', dataAddress: '127.0.0.9', stateDir: '/tmp/x' });
    expect(o.defaults.maxRounds).toBe(3);
  });

  it('names the bad key in every error', () => {
    const cases: [string, RegExp][] = [
      ['defaults: { downtime: 30s }', /defaults\.downtime: must be at most 20s/],
      ['defaults: { downtime: 2 }', /defaults\.downtime: 2 has no unit/],
      ['defaults: { chunkSize: 1 parsec }', /defaults\.chunkSize: "1 parsec" is not a size/],
      ['defaults: { chunkSize: 1000 }', /defaults\.chunkSize: must be a multiple of 4KiB/],
      ['defaults: { bandwidth: fast }', /defaults\.bandwidth: "fast" is not a bandwidth/],
      ['defaults: { codec: gzip }', /defaults\.codec:/],
      ['defaults: { maxRounds: 0 }', /defaults\.maxRounds: must be a whole number from 1 to 64/],
      ['defaults: { maxRounds: 65 }', /defaults\.maxRounds: must be a whole number from 1 to 64/],
      ['defaults: { roundTimeout: 2m }', /defaults: roundTimeout: unknown key|roundTimeout/],
      ['defaults: { holdAfter: [lunch] }', /defaults\.holdAfter\.0: must name phases/],
      ['temporal: { adress: x }', /temporal\.adress: unknown key/],
      ['temporal: { tls: { certFile: /a.pem } }', /temporal\.tls: certFile and keyFile go together/],
      ['node: { name: "../../etc", dataAddress: x }', /node\.name: must be 1-63 characters/],
      ['log: { level: loud }', /log\.level:/],
      ['colour: blue', /colour: unknown key/],
      ['temporal: [1, 2]', /temporal:/],
    ];
    for (const [yaml, re] of cases) {
      const e = errorOf(() => loadConfig({ file: write(yaml), env: {} }));
      expect(e.type, yaml).toBe('BadInput');
      expect(e.message, yaml).toMatch(re);
      expect(e.message, yaml).toContain(join(dir, 'ferry.yaml'));
    }
  });

  it('names the environment variable when the bad value came from it', () => {
    const e = errorOf(() => loadConfig({ env: { FERRY_DOWNTIME: '25s' } }));
    expect(e.message).toMatch(/defaults\.downtime \(from FERRY_DOWNTIME\): must be at most 20s/);
    const e2 = errorOf(() => loadConfig({ env: { FERRY_NODE: 'Node A' } }));
    expect(e2.message).toMatch(/node\.name \(from FERRY_NODE\)/);
  });

  it('reports unreadable files and broken YAML clearly', () => {
    expect(errorOf(() => loadConfig({ file: join(dir, 'missing.yaml'), env: {} })).message).toMatch(/missing\.yaml: cannot read it \(ENOENT\)/);
    expect(errorOf(() => loadConfig({ file: write('temporal: {address: [unclosed'), env: {} })).message).toMatch(/not valid YAML at line 1/);
    expect(errorOf(() => loadConfig({ file: write('- a\n- b\n'), env: {} })).message).toMatch(/top level must be a mapping/);
    // an empty file is an empty config
    expect(loadConfig({ file: write(''), env: {} }).temporal.address).toBe('127.0.0.1:7233');
  });

  it('fills the node name from --node and says what a node worker is missing', () => {
    expect(errorOf(() => requireNodeConfig(loadConfig({ env: {} }))).message).toMatch(/needs node\.name and node\.dataAddress/);
    const c = loadConfig({ env: { FERRY_DATA_ADDRESS: '127.0.0.1', FERRY_NODE: 'node-z' }, nodeName: 'node-c' });
    expect(requireNodeConfig(c)).toEqual({ name: 'node-c', dataAddress: '127.0.0.1', stateDir: '/var/lib/ferry/nodes/node-c' });
    expect(errorOf(() => loadConfig({ env: { FERRY_NODE: 'node-c' } })).message).toMatch(/node\.dataAddress: is required/);
    expect(errorOf(() => loadConfig({ env: { FERRY_DATA_ADDRESS: '127.0.0.1' } })).message).toMatch(/node\.name: is required/);
    expect(errorOf(() => loadConfig({ env: { FERRY_DATA_ADDRESS: '127.0.0.1' }, nodeName: '../x' })).message).toMatch(/node\.name \(from --node\)/);
  });

  it('parses sizes, bandwidths and durations, and refuses junk', () => {
    expect(parseSize('1MiB')).toBe(1048576);
    expect(parseSize('1MB')).toBe(1_000_000);
    expect(parseSize('2G')).toBe(2 * 2 ** 30);
    expect(parseSize(4096)).toBe(4096);
    expect(parseSize('1.5KiB')).toBe(1536);
    expect(() => parseSize('-1MiB')).toThrow(/not a size/);
    expect(() => parseSize(1.5)).toThrow(/whole number/);
    expect(parseBandwidth('100Mbit')).toBe(12_500_000);
    expect(parseBandwidth('1Gbit/s')).toBe(125_000_000);
    expect(parseBandwidth('10MiB/s')).toBe(10 * 2 ** 20);
    expect(parseBandwidth(0)).toBe(0);
    expect(parseBandwidth('0')).toBe(0);
    expect(() => parseBandwidth(100)).toThrow(/no unit/);
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1.5m')).toBe(90_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(() => parseDuration('soon')).toThrow(/not a duration/);
  });
});

// The one options schema, as the controller resolves a run's options from it.
describe('migration options: one schema for config, CLI and workflow input', () => {
  it('resolves caller over config defaults over built-in defaults, with units or numbers', async () => {
    const { resolveOptions, parseOptions } = await import('../../src/shared/options-schema.js');
    const { DEFAULT_OPTIONS } = await import('../../src/shared/options.js');
    const cfg = loadConfig({ env: { FERRY_DOWNTIME: '3s', FERRY_MAX_ROUNDS: '5' } });
    expect(resolveOptions(undefined, cfg.defaults)).toEqual({ ...DEFAULT_OPTIONS, downtimeMs: 3000, maxRounds: 5 });
    expect(resolveOptions({ downtime: '500ms', chunkSize: 65536, bandwidth: '100Mbit', verify: true }, cfg.defaults)).toEqual({
      ...DEFAULT_OPTIONS,
      downtimeMs: 500,
      maxRounds: 5,
      chunkSize: 65536,
      bandwidthBytesPerSec: 12_500_000,
      verifyDisk: true,
    });
    // The same limits as the config file's, by the option's name.
    expect(() => parseOptions({ chunkSize: 0 })).toThrow(/chunkSize: must be a multiple of 4KiB between 4KiB and 64MiB/);
    expect(() => parseOptions({ downtime: '999s' })).toThrow(/downtime: must be at most 20s/);
    expect(() => parseOptions({ maxRounds: 1000 })).toThrow(/maxRounds: must be a whole number from 1 to 64/);
    expect(() => parseOptions({ downtimeMs: 2000 })).toThrow(/downtimeMs: unknown option/);
    expect(() => parseOptions({ holdAfter: ['memory', 'x'] })).toThrow(/holdAfter\.1: must name phases/);
  });
});
