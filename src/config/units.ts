// Human units in the config file: sizes ('1MiB'), bit rates ('100Mbit') and durations ('30s').
// Hand-rolled on purpose: the npm parsers we looked at (`bytes`, `ms`) either treat 'MB' as
// binary, know no bit rates, or return undefined/NaN on junk instead of saying what is wrong.

const SIZE_UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

const NUMBER_WITH_UNIT = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z/]*)\s*$/;

function split(value: string): { n: number; unit: string } | undefined {
  const m = NUMBER_WITH_UNIT.exec(value);
  if (!m) return undefined;
  return { n: Number(m[1]), unit: m[2]!.toLowerCase() };
}

function checkSafe(n: number, value: string | number): number {
  if (!Number.isSafeInteger(n)) throw new Error(`${JSON.stringify(value)} is too large`);
  return n;
}

/** '1MiB' -> 1048576, '1MB' -> 1000000, 4096 -> 4096 (bytes). Bare letters K/M/G/T are binary. */
export function parseSize(value: string | number): number {
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || value < 0) throw new Error(`${value} is not a whole number of bytes`);
    return checkSafe(value, value);
  }
  const p = split(value);
  const mult = p ? SIZE_UNITS[p.unit === '' ? 'b' : p.unit] : undefined;
  if (!p || mult === undefined) {
    throw new Error(`${JSON.stringify(value)} is not a size: use bytes or a unit like '512KiB', '1MiB', '2GiB', '10MB'`);
  }
  return checkSafe(Math.round(p.n * mult), value);
}

const RATE_UNITS: Record<string, number> = {
  // bits per second, SI (network links are sold in SI bits)
  bit: 1 / 8,
  kbit: 1e3 / 8,
  mbit: 1e6 / 8,
  gbit: 1e9 / 8,
  'bit/s': 1 / 8,
  'kbit/s': 1e3 / 8,
  'mbit/s': 1e6 / 8,
  'gbit/s': 1e9 / 8,
  bps: 1 / 8,
  kbps: 1e3 / 8,
  mbps: 1e6 / 8,
  gbps: 1e9 / 8,
  // bytes per second
  'b/s': 1,
  'kb/s': 1e3,
  'mb/s': 1e6,
  'gb/s': 1e9,
  'kib/s': 2 ** 10,
  'mib/s': 2 ** 20,
  'gib/s': 2 ** 30,
};

/** '100Mbit' -> 12500000 bytes/s, '10MiB/s' -> 10485760, 0 or '0' -> 0 (unlimited). */
export function parseBandwidth(value: string | number): number {
  if (typeof value === 'number') {
    if (value === 0) return 0;
    throw new Error(`${value} has no unit: write e.g. '100Mbit' or '12MB/s' (0 means unlimited)`);
  }
  const p = split(value);
  if (p && p.n === 0) return 0;
  const mult = p ? RATE_UNITS[p.unit] : undefined;
  if (!p || mult === undefined) {
    throw new Error(`${JSON.stringify(value)} is not a bandwidth: use e.g. '100Mbit', '1Gbit', '12MB/s', '10MiB/s' or 0`);
  }
  return checkSafe(Math.round(p.n * mult), value);
}

const DURATION_UNITS: Record<string, number> = {
  ms: 1,
  s: 1000,
  sec: 1000,
  m: 60_000,
  min: 60_000,
  h: 3_600_000,
};

/** '30s' -> 30000, '500ms' -> 500, '5m' -> 300000 (milliseconds). A bare number must be 0. */
export function parseDuration(value: string | number): number {
  if (typeof value === 'number') {
    if (value === 0) return 0;
    throw new Error(`${value} has no unit: write e.g. '500ms', '2s' or '5m'`);
  }
  const p = split(value);
  if (p && p.n === 0 && p.unit === '') return 0;
  const mult = p ? DURATION_UNITS[p.unit] : undefined;
  if (!p || mult === undefined) {
    throw new Error(`${JSON.stringify(value)} is not a duration: use e.g. '500ms', '2s', '5m' or '1h'`);
  }
  return checkSafe(Math.round(p.n * mult), value);
}
