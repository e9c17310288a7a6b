// Turns the runs into the report: medians per method, ratios against the baseline and against the
// paper's own figures (section VI), and the per-second series the figures are drawn from.
import type { Method, PhaseSpan, RunRecord } from './paper-runs.js';

/** The paper's Figures 7 and 8 (2 GB disk, 128 MB guest, 100 Mbit/s LAN, 3 runs averaged). */
export const PAPER = {
  setup: { diskBytes: 2e9, memoryBytes: 128e6, linkMbit: 100, runs: 3 },
  totalMs: 280_000,
  downtimeMs: 5_000,
  phases: [
    { phase: 'compression', startMs: 0, endMs: 65_000 },
    { phase: 'disk transfer', startMs: 65_000, endMs: 156_000 },
    { phase: 'memory pre-copy', startMs: 220_000, endMs: 237_000 },
    { phase: 'suspended', startMs: 237_000, endMs: 242_000 },
    { phase: 'disk sync (after resume)', startMs: 243_000, endMs: 280_000 },
  ],
  notes: 'throughput halves while the guest is suspended; the paper resumes before the last disk sync, Ferry syncs before resuming',
} as const;

export function median(xs: number[]): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m]! : (v[m - 1]! + v[m]!) / 2;
}

/** Answered requests per second, in 1 s buckets (t = bucket start, seconds from migration start). */
export function throughputSeries(r: RunRecord): { t: number; rps: number }[] {
  if (r.samples.length === 0) return [];
  const first = Math.floor(r.samples[0]!.t / 1000);
  const last = Math.floor(r.samples.at(-1)!.t / 1000);
  const counts = new Map<number, number>();
  for (let b = first; b <= last; b++) counts.set(b, 0);
  for (const s of r.samples) if (s.ms !== null) counts.set(Math.floor(s.t / 1000), (counts.get(Math.floor(s.t / 1000)) ?? 0) + 1);
  // The first and last buckets are partial (the client started or stopped inside them).
  return [...counts].filter(([t]) => t > first && t < last).map(([t, rps]) => ({ t, rps }));
}

/** Median duration of each phase across runs, in the order the phases happen. */
function medianPhases(runs: RunRecord[]): { phase: string; startMs: number; endMs: number; ms: number }[] {
  const names: string[] = [];
  for (const r of runs) for (const p of r.phases) if (!names.includes(p.phase)) names.push(p.phase);
  return names.map((phase) => {
    const ps = runs.map((r) => r.phases.find((p) => p.phase === phase)).filter((p): p is PhaseSpan => !!p);
    const startMs = Math.round(median(ps.map((p) => p.startMs)));
    const endMs = Math.round(median(ps.map((p) => p.endMs)));
    return { phase, startMs, endMs, ms: Math.round(median(ps.map((p) => p.endMs - p.startMs))) };
  });
}

export function summarize(method: Method, all: RunRecord[]) {
  const runs = all.filter((r) => r.method === method && r.ok);
  const answered = (r: RunRecord, from: number, to: number) => r.samples.filter((s) => s.t >= from && s.t < to && s.ms !== null);
  // Throughput while the migration runs against before it: how much the move costs the guest's users.
  const duringRps = median(runs.map((r) => answered(r, 0, r.totalMs).length / (r.totalMs / 1000)));
  const beforeRps = median(runs.map((r) => { const t = -Math.min(...r.samples.map((s) => s.t)); return t > 0 ? answered(r, -t, 0).length / (t / 1000) : NaN; }));
  const rtDuring = median(runs.flatMap((r) => answered(r, 0, r.totalMs).map((s) => s.ms!)));
  return {
    runs: runs.length,
    failed: all.filter((r) => r.method === method && !r.ok).map((r) => ({ run: r.run, error: r.error })),
    totalMs: Math.round(median(runs.map((r) => r.totalMs))),
    downtimeMs: Math.round(median(runs.map((r) => r.downtimeMs))),
    qemuDowntimeMs: Math.round(median(runs.map((r) => r.qemuDowntimeMs ?? NaN))),
    clientGapMs: Math.round(median(runs.map((r) => r.clientGapMs))),
    bytesOnWire: Math.round(median(runs.map((r) => r.bytesOnWire.total))),
    bytesOnWireAtoB: Math.round(median(runs.map((r) => r.bytesOnWire.aToB))),
    ...(method === 'ferry' || method === 'ferry-libvirt' ? { pause: medianPause(runs) } : {}),
    ...(method === 'ferry' || method === 'ferry-libvirt' ? { diskWireBytes: Math.round(median(runs.map((r) => r.diskWireBytes ?? NaN))), rounds: median(runs.map((r) => r.rounds ?? NaN)) } : {}),
    memoryBytes: Math.round(median(runs.map((r) => r.memoryBytes))),
    phases: medianPhases(runs),
    requestsPerSecond: { before: +beforeRps.toFixed(2), during: +duringRps.toFixed(2) },
    responseMsDuringMedian: rtDuring,
    /** Median link rate while bytes flowed (seconds above 1 Mbit/s), node-a -> node-b. */
    linkMbitWhileBusy: +median(runs.flatMap((r) => r.link.filter((l) => l.t >= 0 && l.t <= r.totalMs && l.mbit > 1).map((l) => l.mbit))).toFixed(1),
    cpuBusyDuring: +median(runs.flatMap((r) => r.link.filter((l) => l.t >= 0 && l.t <= r.totalMs).map((l) => l.cpuBusy))).toFixed(2),
    ...(method === 'ferry' || method === 'ferry-libvirt' ? { diskIdentical: runs.every((r) => r.diskIdentical !== false) } : {}),
  };
}

/** Median of each part of Ferry's pause across runs. */
function medianPause(runs: RunRecord[]) {
  const part = (k: 'finalSyncMs' | 'switchoverMs' | 'resumeMs' | 'totalMs') => Math.round(median(runs.map((r) => r.pause?.[k] ?? NaN)));
  return { finalSyncMs: part('finalSyncMs'), switchoverMs: part('switchoverMs'), resumeMs: part('resumeMs'), totalMs: part('totalMs') };
}

export type MethodSummary = ReturnType<typeof summarize>;

const ratio = (a: number, b: number) => (b > 0 && Number.isFinite(a) ? +(a / b).toFixed(3) : null);

export function ratios(ferry: MethodSummary, baseline: MethodSummary) {
  return {
    ferryOverBaseline: {
      totalMs: ratio(ferry.totalMs, baseline.totalMs),
      downtimeMs: ratio(ferry.downtimeMs, baseline.downtimeMs),
      clientGapMs: ratio(ferry.clientGapMs, baseline.clientGapMs),
      bytesOnWire: ratio(ferry.bytesOnWire, baseline.bytesOnWire),
    },
    ferryOverPaper: {
      totalMs: ratio(ferry.totalMs, PAPER.totalMs),
      downtimeMs: ratio(ferry.downtimeMs, PAPER.downtimeMs),
      clientGapMs: ratio(ferry.clientGapMs, PAPER.downtimeMs),
    },
    baselineOverPaper: {
      totalMs: ratio(baseline.totalMs, PAPER.totalMs),
      downtimeMs: ratio(baseline.downtimeMs, PAPER.downtimeMs),
    },
  };
}

/** The run shown in the figures: the one whose total time is the median of its method. */
export function representative(method: Method, all: RunRecord[]): RunRecord | undefined {
  const runs = all.filter((r) => r.method === method && r.ok).sort((a, b) => a.totalMs - b.totalMs);
  return runs[Math.floor((runs.length - 1) / 2)];
}
