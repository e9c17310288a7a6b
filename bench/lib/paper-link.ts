// What crosses the migration link, read from the kernel's own counters on `mig0` in node-a's
// namespace (both methods are measured the same way, whatever they report themselves), and how
// busy the CPUs are. Sampled once a second so the report shows whether the link or the CPU was
// the limit at each moment.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface LinkCounters {
  /** node-a -> node-b (the migration direction) */
  txBytes: number;
  /** node-b -> node-a (acknowledgements, protocol replies) */
  rxBytes: number;
}

export interface LinkSample {
  /** ms since the epoch */
  at: number;
  txBytes: number;
  rxBytes: number;
  /** Fraction of all CPUs busy since the previous sample (0..1). */
  cpuBusy: number;
}

/** `ip -s -j link show DEV` inside `netns`: JSON, so no text scraping. */
export async function readLinkCounters(netns: string, dev = 'mig0'): Promise<LinkCounters> {
  const { stdout } = await run('ip', ['-n', netns, '-s', '-j', 'link', 'show', dev]);
  const parsed = JSON.parse(stdout) as Array<{ stats64?: { rx: { bytes: number }; tx: { bytes: number } } }>;
  const s = parsed[0]?.stats64;
  if (!s) throw new Error(`no byte counters for ${dev} in namespace ${netns}`);
  return { txBytes: s.tx.bytes, rxBytes: s.rx.bytes };
}

async function cpuTimes(): Promise<{ busy: number; total: number }> {
  const first = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!;
  const v = first.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: idle + iowait are the not-busy part.
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return { busy: total - idle, total };
}

/** Samples the link counters and CPU once a second until stopped. */
export function startLinkSampler(netns: string, periodMs = 1000) {
  const samples: LinkSample[] = [];
  let stopped = false;
  const loop = (async () => {
    let prev = await cpuTimes();
    while (!stopped) {
      const began = Date.now();
      try {
        const c = await readLinkCounters(netns);
        const now = await cpuTimes();
        const dt = now.total - prev.total;
        samples.push({ at: began, ...c, cpuBusy: dt > 0 ? +((now.busy - prev.busy) / dt).toFixed(3) : 0 });
        prev = now;
      } catch {
        // a missed sample leaves a gap in the series; the before/after totals are read separately
      }
      const wait = periodMs - (Date.now() - began);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    }
  })();
  return {
    samples,
    async stop(): Promise<LinkSample[]> {
      stopped = true;
      await loop;
      return samples;
    },
  };
}
