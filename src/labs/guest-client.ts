// Client of the lab guest's request protocol (TCP port 7000 in the guest, forwarded by QEMU on the
// node): `stat` -> `counter=N seq=M uptime=S`, `quiesce` -> `quiesced seq=M`. The prober plays the
// paper's Figure 8 user: it keeps asking and records response times and the longest gap.
import { connect } from 'node:net';

export interface GuestStat {
  counter: number;
  seq: number;
  uptime: number;
}

export function request(host: string, port: number, line: string, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host, port });
    let data = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`guest at ${host}:${port} did not answer ${JSON.stringify(line)} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${line}\n`));
    sock.on('data', (d) => {
      data += d;
      if (data.includes('\n')) sock.end();
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    sock.on('close', () => {
      clearTimeout(timer);
      const first = data.split('\n')[0]?.trim() ?? '';
      if (first) resolve(first);
      else reject(new Error(`guest at ${host}:${port} closed without answering`));
    });
  });
}

export function parseStat(line: string): GuestStat {
  const m = /counter=(\d+)\s+seq=(\d+)(?:\s+uptime=([\d.]+))?/.exec(line);
  if (!m) throw new Error(`unexpected guest answer: ${JSON.stringify(line)}`);
  return { counter: Number(m[1]), seq: Number(m[2]), uptime: Number(m[3] ?? 0) };
}

export async function stat(host: string, port: number): Promise<GuestStat> {
  return parseStat(await request(host, port, 'stat'));
}

/** Stops the guest's writers and syncs; returns the last durable record's seq. */
export async function quiesce(host: string, port: number): Promise<number> {
  const line = await request(host, port, 'quiesce', 15_000);
  const m = /seq=(\d+)/.exec(line);
  if (!m) throw new Error(`unexpected quiesce answer: ${JSON.stringify(line)}`);
  return Number(m[1]);
}

export interface ProbeSample {
  /** ms since the prober started */
  t: number;
  /** response time in ms, or null if the request failed */
  ms: number | null;
  host?: string;
  counter?: number;
  seq?: number;
}

/**
 * Asks the guest every `intervalMs` wherever it runs (tries each candidate address in turn, the
 * last one that answered first) until stopped. The longest gap between answered requests is the
 * downtime a user sees.
 */
export function startProber(candidates: { host: string; port: number }[], intervalMs = 200) {
  const samples: ProbeSample[] = [];
  const t0 = Date.now();
  let stopped = false;
  let preferred = 0;
  const loop = (async () => {
    while (!stopped) {
      const began = Date.now();
      let sample: ProbeSample = { t: began - t0, ms: null };
      for (let k = 0; k < candidates.length; k++) {
        const i = (preferred + k) % candidates.length;
        const c = candidates[i]!;
        try {
          const s = await stat(c.host, c.port);
          sample = { t: began - t0, ms: Date.now() - began, host: c.host, counter: s.counter, seq: s.seq };
          preferred = i;
          break;
        } catch {
          // not there (yet/any more): try the next host
        }
      }
      samples.push(sample);
      const wait = intervalMs - (Date.now() - began);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    samples,
    async stop() {
      stopped = true;
      await loop;
      return summarizeProbe(samples);
    },
  };
}

export function summarizeProbe(samples: ProbeSample[]) {
  const ok = samples.filter((s) => s.ms !== null);
  let longestGapMs = 0;
  for (let i = 1; i < ok.length; i++) longestGapMs = Math.max(longestGapMs, ok[i]!.t - ok[i - 1]!.t);
  const counters = ok.map((s) => s.counter ?? 0);
  let counterReset = false;
  for (let i = 1; i < counters.length; i++) if (counters[i]! < counters[i - 1]!) counterReset = true;
  return {
    requests: samples.length,
    answered: ok.length,
    longestGapMs,
    counterReset,
    firstCounter: counters[0],
    lastCounter: counters[counters.length - 1],
    hosts: [...new Set(ok.map((s) => s.host))],
  };
}
