// The paper's Figures 7 (guest throughput over time) and 8 (response time over time), Ferry and
// the baseline side by side, with the migration phases as bands. Drawn with vega-lite, rendered
// headless to SVG by vega (renderer 'none': no canvas or browser needed).
import { View, parse } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import type { RunRecord } from './paper-runs.js';
import { throughputSeries } from './paper-report.js';

const LABEL: Record<string, string> = { ferry: 'Ferry (Temporal workflow, LZO + dirty rounds)', baseline: 'Baseline (libvirt-style blockdev-mirror + migrate)' };

/**
 * One colour per kind of work, the same for both methods: greys for bookkeeping, blues for the
 * disk, purple for memory, reds for the time the guest is paused.
 */
const PHASE_COLORS: [string, string][] = [
  ['validate', '#d9d9d9'], ['reserve', '#bdbdbd'], ['prepare', '#969696'], ['track', '#737373'],
  ['bulk-copy', '#4e79a7'], ['disk-mirror', '#4e79a7'], ['dirty-rounds', '#a0cbe8'],
  ['memory', '#b07aa1'],
  ['final-sync', '#e15759'], ['resume', '#ff9d9a'], ['paused', '#e15759'],
  ['commit', '#59a14f'], ['cleanup', '#8cd17d'],
];

function bands(r: RunRecord) {
  // Bands shorter than 0.1 s are invisible at this scale; they still appear in the JSON.
  return r.phases.filter((p) => p.endMs - p.startMs >= 100).map((p) => ({ phase: p.phase, start: p.startMs / 1000, end: p.endMs / 1000 }));
}

function panel(r: RunRecord, kind: 'throughput' | 'response', xMax: number, yMax: number) {
  const x = { field: 't', type: 'quantitative', title: 'seconds since the migration started', scale: { domain: [Math.floor(Math.min(0, ...r.samples.map((s) => s.t / 1000))), xMax], nice: false } } as const;
  const bandLayer = {
    data: { values: bands(r) },
    mark: { type: 'rect', opacity: 0.25 },
    encoding: {
      x: { field: 'start', type: 'quantitative', scale: x.scale, title: x.title },
      x2: { field: 'end' },
      color: { field: 'phase', type: 'nominal', title: 'phase', scale: { domain: PHASE_COLORS.map((c) => c[0]), range: PHASE_COLORS.map((c) => c[1]) } },
      tooltip: [{ field: 'phase' }, { field: 'start' }, { field: 'end' }],
    },
  };
  const data =
    kind === 'throughput'
      ? throughputSeries(r)
      : r.samples.map((s) => ({ t: s.t / 1000, ms: s.ms, lost: s.ms === null ? 0 : null }));
  const lineLayer =
    kind === 'throughput'
      ? {
          data: { values: data },
          mark: { type: 'line', interpolate: 'step-after', color: '#222', strokeWidth: 1.4 },
          encoding: { x, y: { field: 'rps', type: 'quantitative', title: 'answered requests / s', scale: { domain: [0, yMax] } } },
        }
      : {
          data: { values: data },
          layer: [
            {
              transform: [{ filter: 'datum.ms !== null' }],
              mark: { type: 'point', filled: true, size: 10, color: '#222' },
              encoding: { x, y: { field: 'ms', type: 'quantitative', title: 'response time (ms)', scale: { domain: [0, yMax], clamp: true } } },
            },
            {
              transform: [{ filter: 'datum.ms === null' }],
              mark: { type: 'point', shape: 'cross', filled: true, size: 30, color: '#d62728' },
              encoding: { x, y: { field: 'lost', type: 'quantitative' } },
            },
          ],
        };
  return {
    title: { text: `${LABEL[r.method]}, run ${r.run}`, fontSize: 12, subtitle: `total ${(r.totalMs / 1000).toFixed(1)} s, paused ${(r.downtimeMs / 1000).toFixed(2)} s, client gap ${(r.clientGapMs / 1000).toFixed(2)} s` },
    width: 480,
    height: 200,
    layer: [bandLayer, lineLayer],
  };
}

/** One figure as an SVG string. */
export async function renderFigure(kind: 'throughput' | 'response', runs: RunRecord[], subtitle: string): Promise<string> {
  const xMax = Math.ceil(Math.max(...runs.map((r) => Math.max(r.totalMs / 1000, ...r.samples.map((s) => s.t / 1000)))));
  const yMax =
    kind === 'throughput'
      ? Math.max(1, ...runs.flatMap((r) => throughputSeries(r).map((b) => b.rps))) + 1
      : // The 99th percentile keeps one slow outlier from flattening everything else (clamped at the top).
        Math.max(10, Math.ceil(percentile(runs.flatMap((r) => r.samples.map((s) => s.ms).filter((m): m is number => m !== null)), 0.99) * 1.2));
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: kind === 'throughput' ? 'Guest throughput during live migration (cf. the paper\'s Figure 7)' : 'Response time seen by a client during live migration (cf. the paper\'s Figure 8)',
      subtitle: kind === 'response' ? `${subtitle}; red crosses: unanswered requests` : subtitle,
      anchor: 'start',
      fontSize: 15,
    },
    background: 'white',
    padding: 12,
    hconcat: runs.map((r) => panel(r, kind, xMax, yMax)),
    resolve: { scale: { color: 'shared' } },
    config: { legend: { orient: 'bottom', columns: 6 }, axis: { labelFontSize: 11, titleFontSize: 11 } },
  } as unknown as TopLevelSpec;
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const v = [...xs].sort((a, b) => a - b);
  return v[Math.min(v.length - 1, Math.floor(p * v.length))]!;
}
