// The story of one migration, finished or not, as `ferry show` tells it: phases with durations,
// the pause in its parts, streams with bytes and rates, rounds, the error, and for a running one
// the live disk and memory progress. Pure functions of what the workflow keeps (progress query,
// result, failure): the command reads, these render, so tests need no Temporal.
import type { MigrationOptions } from '../../shared/options.js';
import type { DiskStreamProgress, MemoryStreamProgress, MigrationProgress, MigrationResult, PauseParts, PhaseEvent, ProgressSample } from '../../shared/messages.js';
import { formatBytes } from '../progress.js';

/** What `ferry show` knows about one run: Temporal's description plus whatever the workflow answered. */
export interface MigrationStory {
  workflowId: string;
  runId?: string;
  /** Temporal's status: RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT. */
  status: string;
  startTime?: string;
  closeTime?: string;
  progress?: MigrationProgress;
  result?: MigrationResult;
  error?: string;
}

/** One phase, in ms since the first timeline event. */
export interface PhaseSpan {
  phase: string;
  startMs: number;
  endMs: number;
  durationMs: number;
  detail?: string;
}

/** The pause as a window on the same clock as the spans: source stopped to destination running. */
export interface PauseWindow {
  startMs: number;
  endMs: number;
  /** `parts`: from the recorded pause total; `timeline`: from the final-sync and commit events. */
  from: 'parts' | 'timeline';
}

/** Phases after which nothing more happens: a closed run ends on one of them. */
const TERMINAL = new Set(['done', 'rolled-back', 'failed']);

export function isRunning(story: MigrationStory): boolean {
  return story.status === 'RUNNING';
}

/** The result's timeline once there is one (it is the final word), else the live one. */
export function storyTimeline(story: MigrationStory): PhaseEvent[] {
  return story.result?.timeline ?? story.progress?.timeline ?? [];
}

/**
 * Time zero of every relative time in the story: the first phase event. Without a timeline (the
 * query went unanswered) the first recorded sample or stream, else Temporal's start time.
 */
export function storyOrigin(story: MigrationStory): number | undefined {
  const t = storyTimeline(story);
  if (t.length) return t[0]!.at;
  const first = [...(story.progress?.samples ?? []).map((s) => s.at), ...storyStreams(story).map((s) => s.startedAt)];
  if (first.length) return Math.min(...first);
  const start = story.startTime ? Date.parse(story.startTime) : NaN;
  return Number.isFinite(start) ? start : undefined;
}

/**
 * Where the last phase ends. A running one: now (clamped, a skewed local clock must not make a
 * negative duration). A closed one on a terminal phase: that event, so the terminal phase lasts 0.
 * A closed one cut short (terminated, timed out) with no terminal event: Temporal's close time,
 * which is when that phase really stopped.
 */
function lastEnd(story: MigrationStory, last: PhaseEvent, now: number): number {
  if (isRunning(story)) return Math.max(last.at, now);
  if (TERMINAL.has(last.phase)) return last.at;
  const close = story.closeTime ? Date.parse(story.closeTime) : NaN;
  return Number.isFinite(close) ? Math.max(last.at, close) : last.at;
}

/**
 * The timeline as spans. Consecutive events of one phase are one span (the workflow appends a
 * second `resume` event to carry the hypervisor's note), their details joined.
 */
export function phaseSpans(story: MigrationStory, now: number = Date.now()): PhaseSpan[] {
  const events = storyTimeline(story);
  if (!events.length) return [];
  const t0 = events[0]!.at;
  const merged: { phase: string; at: number; details: string[] }[] = [];
  for (const e of events) {
    const prev = merged[merged.length - 1];
    if (prev && prev.phase === e.phase) {
      if (e.detail && !prev.details.includes(e.detail)) prev.details.push(e.detail);
    } else merged.push({ phase: e.phase, at: e.at, details: e.detail ? [e.detail] : [] });
  }
  const end = lastEnd(story, events[events.length - 1]!, now);
  return merged.map((m, i) => {
    const startMs = m.at - t0;
    const endMs = (i + 1 < merged.length ? merged[i + 1]!.at : end) - t0;
    const span: PhaseSpan = { phase: m.phase, startMs, endMs, durationMs: endMs - startMs };
    if (m.details.length) span.detail = m.details.join('; ');
    return span;
  });
}

export function storyPause(story: MigrationStory): PauseParts | undefined {
  return story.result?.pause ?? story.progress?.pause;
}

/**
 * The pause on the timeline. The workflow records the pause's total, ending as the destination
 * runs, just before `commit`: so the window is [commit - total, commit]. Before those exist (or
 * from older runs) it is read off the events: the source stops as `final-sync` begins, and runs
 * again (destination: `commit`; source, after a rollback: `rolling-back`/`failed`) at the next of those.
 */
export function pauseWindow(story: MigrationStory, now: number = Date.now()): PauseWindow | undefined {
  const events = storyTimeline(story);
  const t0 = storyOrigin(story);
  if (!events.length || t0 === undefined) return undefined;
  const commit = events.find((e) => e.phase === 'commit');
  const total = storyPause(story)?.totalMs;
  if (commit && total !== undefined && total > 0) return { startMs: commit.at - total - t0, endMs: commit.at - t0, from: 'parts' };
  const i = events.findIndex((e) => e.phase === 'final-sync');
  if (i < 0) return undefined;
  const stop = events.slice(i + 1).find((e) => ['commit', 'rolling-back', 'rolled-back', 'failed'].includes(e.phase));
  const last = events[events.length - 1]!;
  const end = stop ? stop.at : lastEnd(story, last, now);
  return { startMs: events[i]!.at - t0, endMs: end - t0, from: 'timeline' };
}

/** Finished streams: the result's list once there is one, else the live one. */
export function storyStreams(story: MigrationStory) {
  return story.result?.streams ?? story.progress?.streams ?? [];
}

/** How the run ended, in one word: the result's outcome, else what Temporal's status says. */
export function storyOutcome(story: MigrationStory): string {
  if (story.result) return story.result.outcome;
  if (isRunning(story)) return 'running';
  const phase = story.progress?.phase;
  if (phase === 'rolled-back' || phase === 'failed') return phase;
  return story.status.toLowerCase().replace(/_/g, '-');
}

/** Bytes per second over a duration; null when the duration is none (a rate would be a guess). */
function rate(bytes: number, ms: number): number | null {
  return ms > 0 ? Math.round((bytes / ms) * 1000) : null;
}

export interface StoryStreamJson {
  stream: string;
  kind: 'disk' | 'memory';
  startMs: number | null;
  endMs: number | null;
  durationMs: number;
  bytes: number;
  wireBytes: number;
  rateBytesPerSec: number | null;
}

/** `ferry show --json`: every key always present (null when unknown), so scripts need no guessing. */
export interface StoryJson {
  workflowId: string;
  runId: string | null;
  status: string;
  startTime: string | null;
  closeTime: string | null;
  instance: string | null;
  source: string | null;
  destination: string | null;
  outcome: string;
  phase: string | null;
  reason: string | null;
  error: string | null;
  totalMs: number | null;
  options: MigrationOptions | null;
  phases: PhaseSpan[];
  pause: (PauseParts & { startMs: number | null; endMs: number | null }) | null;
  streams: StoryStreamJson[];
  rounds: number | null;
  bytes: { diskSize: number | null; diskSent: number; diskWire: number; memory: number | null };
  diskIdentical: boolean | null;
  disksIdentical: Record<string, boolean> | null;
  samples: (Omit<ProgressSample, 'at'> & { atMs: number })[];
  live: {
    phase: string;
    stream: string | null;
    round: number;
    heldAfter: string | null;
    projectedDowntimeMs: number | null;
    pastPointOfNoReturn: boolean;
    cancelRequested: boolean;
    disk: DiskStreamProgress | null;
    memory: MemoryStreamProgress | null;
  } | null;
}

export function storyJson(story: MigrationStory, now: number = Date.now()): StoryJson {
  const { progress: p, result: r } = story;
  const t0 = storyOrigin(story) ?? 0;
  const phases = phaseSpans(story, now);
  const parts = storyPause(story);
  const win = pauseWindow(story, now);
  const streams = storyStreams(story).map((s) => ({
    stream: s.stream,
    kind: s.kind,
    startMs: s.startedAt ? s.startedAt - t0 : null,
    endMs: s.endedAt ? s.endedAt - t0 : null,
    durationMs: Math.max(0, s.endedAt - s.startedAt),
    bytes: s.bytes,
    wireBytes: s.wireBytes,
    rateBytesPerSec: rate(s.bytes, s.endedAt - s.startedAt),
  }));
  const disk = streams.filter((s) => s.kind === 'disk');
  const memoryStream = streams.find((s) => s.kind === 'memory');
  const last = phases[phases.length - 1];
  return {
    workflowId: story.workflowId,
    runId: story.runId ?? null,
    status: story.status,
    startTime: story.startTime ?? null,
    closeTime: story.closeTime ?? null,
    instance: r?.instanceId ?? p?.instanceId ?? null,
    source: r?.source ?? p?.source ?? null,
    destination: r?.destination ?? p?.destination ?? null,
    outcome: storyOutcome(story),
    phase: p?.phase ?? last?.phase ?? null,
    reason: r?.reason ?? null,
    error: story.error ?? p?.error ?? null,
    totalMs: r?.totalMs ?? (last ? last.endMs : null),
    options: r?.options ?? p?.options ?? null,
    phases,
    pause: parts ? { ...parts, startMs: win?.startMs ?? null, endMs: win?.endMs ?? null } : null,
    streams,
    rounds: r?.rounds ?? p?.round ?? null,
    bytes: {
      diskSize: r?.diskBytes ?? null,
      diskSent: disk.reduce((n, s) => n + s.bytes, 0),
      diskWire: r?.diskWireBytes ?? disk.reduce((n, s) => n + s.wireBytes, 0),
      memory: r?.memoryBytes ?? memoryStream?.bytes ?? p?.memory?.transferredBytes ?? null,
    },
    diskIdentical: r?.diskIdentical ?? null,
    disksIdentical: r?.disksIdentical ?? null,
    samples: (p?.samples ?? []).map(({ at, ...s }) => ({ atMs: at - t0, ...s })),
    live:
      isRunning(story) && p
        ? {
            phase: p.phase,
            stream: p.stream ?? null,
            round: p.round,
            heldAfter: p.heldAfter ?? null,
            projectedDowntimeMs: p.projectedDowntimeMs ?? null,
            pastPointOfNoReturn: p.pastPointOfNoReturn,
            cancelRequested: p.cancelRequested,
            disk: p.disk ?? null,
            memory: p.memory ?? null,
          }
        : null,
  };
}

/** 850 ms, 12.3 s, 4 min 05 s: the unit a person reads at a glance. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
  const s = Math.round(ms / 1000);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h ? `${h} h ${String(m).padStart(2, '0')} min ${sec} s` : `${m} min ${sec} s`;
}

/** A time since the start, always in seconds: a column of them reads like an axis. */
function formatOffset(ms: number): string {
  return `+${(ms / 1000).toFixed(1)} s`;
}

function formatRate(bytesPerSec: number | null): string {
  return bytesPerSec === null ? '-' : `${formatBytes(bytesPerSec)}/s`;
}

/** A left-aligned table: the widest cell of each column sets its width. */
function table(rows: string[][], indent = '  '): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => indent + r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ').trimEnd());
}

export function renderStoryText(story: MigrationStory, now: number = Date.now()): string {
  const j = storyJson(story, now);
  const lines: string[] = [];
  // Without an answer from the workflow only Temporal's side is known: no route, no times.
  const route = j.instance ? `, ${j.instance} ${j.source ?? '?'} -> ${j.destination ?? '?'}` : '';
  const took = j.totalMs !== null ? formatDuration(j.totalMs) : undefined;
  const how = isRunning(story) ? (took ? `running for ${took}` : 'running') : `${j.outcome}${took ? ` in ${took}` : ''}`;
  lines.push(`${j.workflowId}: ${j.status}${route}, ${how}`);
  // A rollback carries its reason in the result; a failure in the error: show each once.
  if (j.reason) lines.push(`reason: ${j.reason}`);
  if (j.error && j.error !== j.reason) lines.push(`error: ${j.error}`);

  if (j.phases.length) {
    lines.push('', 'phases');
    const open = isRunning(story) ? j.phases.length - 1 : -1;
    // The rollback phases carry the reason as their detail: already on the line above.
    const said = new Set([j.reason, j.error]);
    lines.push(
      ...table(
        j.phases.map((s, i) => [s.phase, formatOffset(s.startMs), i === open ? `${formatDuration(s.durationMs)} so far` : formatDuration(s.durationMs), s.detail && !said.has(s.detail) ? s.detail : '']),
      ),
    );
  }

  if (j.pause) {
    const p = j.pause;
    lines.push('', `pause ${formatDuration(p.totalMs)}${p.startMs !== null ? ` (from ${formatOffset(p.startMs)})` : ''}`);
    const rows = [
      ['final disk round', formatDuration(p.finalSyncMs)],
      ['memory switchover', formatDuration(p.switchoverMs)],
      ['destination start', formatDuration(p.resumeMs)],
      ['total', formatDuration(p.totalMs)],
    ];
    if (p.hypervisorMs !== undefined) rows.push(["hypervisor's own figure", formatDuration(p.hypervisorMs)]);
    lines.push(...table(rows));
  }

  if (j.streams.length) {
    lines.push('', 'streams');
    lines.push(
      ...table([
        ['stream', 'kind', 'bytes', 'wire', 'rate', 'took'],
        ...j.streams.map((s) => [s.stream, s.kind, formatBytes(s.bytes), formatBytes(s.wireBytes), formatRate(s.rateBytesPerSec), formatDuration(s.durationMs)]),
      ]),
    );
  }

  const totals = [
    j.rounds !== null ? `rounds ${j.rounds}` : '',
    j.bytes.diskSize !== null ? `disk size ${formatBytes(j.bytes.diskSize)}` : '',
    j.streams.some((s) => s.kind === 'disk') ? `disk sent ${formatBytes(j.bytes.diskSent)} (wire ${formatBytes(j.bytes.diskWire)})` : '',
    j.bytes.memory !== null ? `memory ${formatBytes(j.bytes.memory)}` : '',
    j.diskIdentical !== null ? (j.diskIdentical ? 'disks verified identical' : 'disks DIFFER') : '',
  ].filter(Boolean);
  if (totals.length) lines.push('', totals.join(', '));

  if (j.live) lines.push('', ...liveLines(j.live));
  return lines.join('\n');
}

/** The running part: where it is now, and each stream's bytes, rate and time left. */
function liveLines(l: NonNullable<StoryJson['live']>): string[] {
  const out = [
    `now: ${l.phase}${l.stream && l.stream !== l.phase ? ` (${l.stream})` : ''}, round ${l.round}` +
      (l.projectedDowntimeMs !== null ? `, projected pause ${formatDuration(l.projectedDowntimeMs)}` : '') +
      (l.heldAfter ? `, held after ${l.heldAfter}` : '') +
      (l.cancelRequested ? ', cancel requested' : '') +
      (l.pastPointOfNoReturn ? ', past the point of no return' : ''),
  ];
  const eta = (ms?: number) => (ms !== undefined ? `, ETA ${formatDuration(ms)}` : '');
  if (l.disk) {
    const d = l.disk;
    // The disk figures stay after their stream ends: say so when another one runs now.
    const last = l.stream && l.stream !== d.stream ? ' (last disk stream)' : '';
    out.push(`  disk ${d.stream}${last}: ${formatBytes(d.bytesDone)}/${formatBytes(d.bytesTotal)} at ${formatRate(d.rateBytesPerSec)}, wire ${formatBytes(d.wireBytes)}${eta(d.etaMs)}`);
  }
  if (l.memory) {
    const m = l.memory;
    out.push(
      `  memory (${m.status}): ${formatBytes(m.transferredBytes)} sent, ${formatBytes(m.remainingBytes)} left of ${formatBytes(m.totalBytes)} at ${formatRate(m.rateBytesPerSec)}${eta(m.etaMs)}` +
        (m.iteration !== undefined ? `, iteration ${m.iteration}` : '') +
        (m.dirtyPagesRate !== undefined ? `, ${m.dirtyPagesRate} dirty pages/s` : ''),
    );
  }
  return out;
}
