// `ferry show --svg FILE`: the story as one picture, drawn like the bench's figures (vega-lite,
// rendered headless to SVG by vega). Two panels over one time axis: the phases with the pause
// under them, then the throughput (samples, or the finished streams' mean rates without samples).
import type { TopLevelSpec } from 'vega-lite';
import { formatDuration, pauseWindow, phaseSpans, storyJson, storyOrigin, type MigrationStory } from './story.js';

/**
 * One colour per kind of work, the bench's scheme (bench/lib/paper-plot.ts): greys for
 * bookkeeping, blues for the disk, purple for memory, reds while the guest is paused, greens once
 * it runs on the destination; oranges and brown for the ways a run ends badly.
 */
const PHASE_COLORS: [string, string][] = [
  ['validate', '#d9d9d9'], ['reserve', '#bdbdbd'], ['prepare', '#969696'], ['track', '#737373'],
  ['bulk-copy', '#4e79a7'], ['dirty-rounds', '#a0cbe8'],
  ['memory', '#b07aa1'],
  ['final-sync', '#e15759'], ['resume', '#ff9d9a'],
  ['commit', '#59a14f'], ['cleanup', '#8cd17d'], ['done', '#2ca02c'],
  ['rolling-back', '#f28e2b'], ['rolled-back', '#ffbe7d'], ['failed', '#9c755f'],
];
const UNKNOWN_PHASE = '#cccccc';
const PAUSE_COLOR = '#d62728';
const KIND_COLORS: Record<string, string> = { disk: '#4e79a7', memory: '#b07aa1' };
const MIB = 1024 * 1024;
const WIDTH = 640;

/** The time axis, the same in both panels. */
type XEnc = { type: 'quantitative'; scale: { domain: [number, number]; nice: boolean }; title: string };

/** Ms to the axis' unit. */
const sec = (ms: number) => ms / 1000;

export async function renderStorySvg(story: MigrationStory, now: number = Date.now()): Promise<string> {
  // Loaded here, not at the top: every CLI command imports this module through the program, and
  // only --svg needs the plotting library.
  const [{ View, parse }, { compile }] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new View(parse(compile(storySpec(story, now)).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** The vega-lite spec; separate from the rendering so the figure's content can be checked without vega. */
export function storySpec(story: MigrationStory, now: number = Date.now()): TopLevelSpec {
  const j = storyJson(story, now);
  const spans = phaseSpans(story, now);
  const pause = pauseWindow(story, now);
  const t0 = storyOrigin(story) ?? 0;
  const samples = (story.progress?.samples ?? []).map((s) => ({ t: sec(s.at - t0), mibps: s.rateBytesPerSec / MIB, kind: s.kind, stream: s.stream }));
  const bars = j.streams
    .filter((s) => s.startMs !== null && s.endMs !== null && s.rateBytesPerSec !== null)
    .map((s) => ({ start: sec(s.startMs!), end: sec(s.endMs!), mid: sec((s.startMs! + s.endMs!) / 2), mibps: s.rateBytesPerSec! / MIB, kind: s.kind, stream: s.stream }));
  // One domain for both panels, from 0 to the last thing known, so they line up.
  const xMax = Math.max(1, ...spans.map((s) => sec(s.endMs)), ...samples.map((s) => s.t), ...bars.map((b) => b.end), pause ? sec(pause.endMs) : 0);
  const x: XEnc = { type: 'quantitative', scale: { domain: [0, xMax], nice: false }, title: 'seconds since the migration started' };

  const title = {
    text: `${j.instance ?? j.workflowId}: ${j.source ?? '?'} -> ${j.destination ?? '?'}, ${j.outcome}`,
    subtitle: subtitle(j),
    anchor: 'start',
    fontSize: 15,
  };
  const spec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title,
    background: 'white',
    padding: 12,
    vconcat: [phasePanel(spans, pause, x), throughputPanel(samples, bars, pause, x)],
    // Phases and stream kinds are different things (both have a "memory"): a colour scale each.
    resolve: { scale: { x: 'shared', color: 'independent' }, legend: { color: 'independent' } },
    config: { legend: { orient: 'bottom', columns: 6 }, axis: { labelFontSize: 11, titleFontSize: 11 }, view: { stroke: '#ddd' } },
  };
  return spec as unknown as TopLevelSpec;
}

function subtitle(j: ReturnType<typeof storyJson>): string[] {
  const lines = [`${j.workflowId} (${j.status})${j.totalMs !== null ? `, ${j.live ? 'running for' : 'total'} ${formatDuration(j.totalMs)}` : ''}`];
  if (j.pause) {
    const p = j.pause;
    lines.push(`paused ${formatDuration(p.totalMs)}: final disk round ${formatDuration(p.finalSyncMs)}, memory switchover ${formatDuration(p.switchoverMs)}, destination start ${formatDuration(p.resumeMs)}`);
  }
  const why = j.reason ?? j.error;
  // A long error would widen the whole figure: the text and JSON views carry it in full.
  if (why) lines.push(why.length > 110 ? `${why.slice(0, 107)}...` : why);
  return lines;
}

/**
 * Panel (a): one lane of phase bands, named in the legend and, where a band is wide enough, on
 * the band; a second lane with the pause in red, labelled with its length.
 */
function phasePanel(spans: ReturnType<typeof phaseSpans>, pause: ReturnType<typeof pauseWindow>, x: XEnc) {
  const xMax = x.scale.domain[1];
  // The pause lane only when there was a pause: an empty one would suggest a pause of 0.
  const lanes = pause ? ['phases', 'pause'] : ['phases'];
  const y = { field: 'lane', type: 'nominal', title: null, scale: { domain: lanes }, axis: { labels: true, ticks: false } };
  const bands = spans.map((s) => ({ lane: 'phases', phase: s.phase, start: sec(s.startMs), end: sec(s.endMs), mid: sec((s.startMs + s.endMs) / 2), wide: s.endMs - s.startMs >= xMax * 1000 * 0.07 }));
  const present = PHASE_COLORS.filter(([p]) => bands.some((b) => b.phase === p));
  const others = [...new Set(bands.map((b) => b.phase))].filter((p) => !present.some(([q]) => q === p));
  const layer: object[] = [];
  if (bands.length) {
    layer.push({
      data: { values: bands },
      // A terminal phase lasts 0: a hairline stroke keeps even that visible.
      mark: { type: 'rect', opacity: 0.85, strokeWidth: 0.5, stroke: 'white' },
      encoding: {
        x: { field: 'start', ...x },
        x2: { field: 'end' },
        y,
        color: {
          field: 'phase',
          type: 'nominal',
          title: 'phase',
          // Only the phases this run went through, in protocol order: the legend tells its story.
          scale: { domain: [...present.map((c) => c[0]), ...others], range: [...present.map((c) => c[1]), ...others.map(() => UNKNOWN_PHASE)] },
        },
      },
    });
    layer.push({
      data: { values: bands.filter((b) => b.wide) },
      mark: { type: 'text', fontSize: 9, baseline: 'middle', color: '#222' },
      encoding: { x: { field: 'mid', ...x }, y, text: { field: 'phase' } },
    });
  } else {
    layer.push(placeholder('no phase recorded yet', x, { field: 'lane', type: 'nominal', scale: { domain: lanes } }, 'phases'));
  }
  if (pause) {
    const p = [{ lane: 'pause', start: sec(pause.startMs), end: sec(pause.endMs), label: `pause ${formatDuration(pause.endMs - pause.startMs)}` }];
    // Stroked: a sub-second pause in a long run would otherwise be narrower than a pixel.
    layer.push({ data: { values: p }, mark: { type: 'rect', color: PAUSE_COLOR, stroke: PAUSE_COLOR, strokeWidth: 1.5 }, encoding: { x: { field: 'start', ...x }, x2: { field: 'end' }, y } });
    // Left of the band when it ends near the right edge, so the label stays in the picture.
    const right = sec(pause.endMs) > xMax * 0.8;
    layer.push({
      data: { values: p },
      mark: { type: 'text', fontSize: 10, fontWeight: 'bold', color: PAUSE_COLOR, align: right ? 'right' : 'left', dx: right ? -4 : 4, baseline: 'middle' },
      encoding: { x: { field: right ? 'start' : 'end', ...x }, y, text: { field: 'label' } },
    });
  }
  return { width: WIDTH, height: pause ? 56 : 28, layer };
}

/**
 * Panel (b): the rate over time, a line per stream coloured by disk or memory, with points so
 * that a single sample shows; each finished stream a bar at its mean rate, faint under the lines,
 * the whole picture when there are no samples (older runs). The pause is shaded, to see the streams stop.
 */
function throughputPanel(
  samples: { t: number; mibps: number; kind: string; stream: string }[],
  bars: { start: number; end: number; mid: number; mibps: number; kind: string; stream: string }[],
  pause: ReturnType<typeof pauseWindow>,
  x: XEnc,
) {
  const kinds = ['disk', 'memory'].filter((k) => [...samples, ...bars].some((s) => s.kind === k));
  const color = { field: 'kind', type: 'nominal', title: 'stream', legend: { symbolOpacity: 1 }, scale: { domain: kinds, range: kinds.map((k) => KIND_COLORS[k] ?? UNKNOWN_PHASE) } };
  const yMax = Math.max(1, ...samples.map((s) => s.mibps), ...bars.map((b) => b.mibps)) * 1.1;
  const y = { field: 'mibps', type: 'quantitative', title: 'MiB/s', scale: { domain: [0, yMax] } };
  const layer: object[] = [];
  if (pause) {
    layer.push({
      data: { values: [{ start: sec(pause.startMs), end: sec(pause.endMs) }] },
      mark: { type: 'rect', color: PAUSE_COLOR, opacity: 0.18 },
      encoding: { x: { field: 'start', ...x }, x2: { field: 'end' } },
    });
  }
  if (bars.length) {
    // Faint behind the samples (they give the context: which stream, its mean), solid without them.
    layer.push({ data: { values: bars }, mark: { type: 'rect', opacity: samples.length ? 0.2 : 0.6 }, encoding: { x: { field: 'start', ...x }, x2: { field: 'end' }, y, y2: { datum: 0 }, color } });
    layer.push({ data: { values: bars }, mark: { type: 'text', fontSize: 9, dy: -6, color: '#555' }, encoding: { x: { field: 'mid', ...x }, y, text: { field: 'stream' } } });
  }
  if (samples.length) {
    layer.push({ data: { values: samples }, mark: { type: 'line', strokeWidth: 1.4, clip: true }, encoding: { x: { field: 't', ...x }, y, color, detail: { field: 'stream' } } });
    layer.push({ data: { values: samples }, mark: { type: 'point', filled: true, size: 14, clip: true }, encoding: { x: { field: 't', ...x }, y, color } });
  }
  if (!samples.length && !bars.length) {
    layer.push(placeholder('no throughput recorded yet', x, { field: 'v', type: 'quantitative', title: 'MiB/s', scale: { domain: [0, 1] } }, 0.5));
  }
  return { width: WIDTH, height: 180, layer };
}

/** A grey note in the middle of an empty panel: a panel with no data would have no axes to read. */
function placeholder(text: string, x: XEnc, y: object, yValue: string | number) {
  return {
    data: { values: [{ t: x.scale.domain[1] / 2, v: yValue, lane: yValue, text }] },
    mark: { type: 'text', color: '#888', fontSize: 11 },
    encoding: { x: { field: 't', ...x }, y, text: { field: 'text' } },
  };
}
