// `ferry show`'s rendering (src/cli/show/): text, JSON and SVG of hand-built stories shaped like
// what the workflow keeps (src/workflows/migrate-instance.ts): a completed migration, one that
// rolled back and failed, one still running, and one nobody could query. No Temporal needed.
import { describe, expect, it } from 'vitest';
import { DEFAULT_OPTIONS } from '../../src/shared/options.js';
import type { PhaseEvent, ProgressSample, StreamRecord } from '../../src/shared/messages.js';
import type { Phase } from '../../src/shared/names.js';
import { phaseSpans, pauseWindow, renderStoryText, storyJson, type MigrationStory } from '../../src/cli/show/story.js';
import { renderStorySvg, storySpec } from '../../src/cli/show/story-plot.js';

const T = 1_700_000_000_000;
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const ev = (phase: Phase, ms: number, detail?: string): PhaseEvent => ({ phase, at: T + ms, detail });
const rec = (stream: string, kind: 'disk' | 'memory', from: number, to: number, bytes: number, wireBytes = bytes): StreamRecord => ({ stream, kind, startedAt: T + from, endedAt: T + to, bytes, wireBytes });

// --- a completed migration: 40 s bulk copy, two dirty rounds, 10 s of memory, a 1.4 s pause ---
const doneTimeline = [
  ev('validate', 0),
  ev('reserve', 300),
  ev('prepare', 500),
  ev('track', 2_500),
  ev('bulk-copy', 2_800),
  ev('dirty-rounds', 42_800),
  ev('memory', 48_800),
  ev('final-sync', 58_800),
  ev('resume', 59_400),
  // The workflow appends a second `resume` event to carry the hypervisor's note.
  ev('resume', 59_900, 'QEMU: 420 ms downtime'),
  ev('commit', 60_200),
  ev('cleanup', 60_400),
  ev('done', 61_400),
];
const doneStreams = [
  rec('bulk', 'disk', 2_800, 42_800, 4 * GiB, 2.5 * GiB),
  rec('round-1', 'disk', 42_900, 46_000, 300 * MiB, 200 * MiB),
  rec('round-2', 'disk', 46_100, 48_700, 40 * MiB, 30 * MiB),
  rec('memory', 'memory', 48_800, 58_800, 1 * GiB),
  rec('final', 'disk', 58_800, 59_400, 8 * MiB, 6 * MiB),
];
const doneSamples: ProgressSample[] = [
  ...Array.from({ length: 16 }, (_, i) => ({ at: T + 4_800 + i * 2_500, kind: 'disk' as const, stream: 'bulk', bytesDone: (i + 1) * 256 * MiB, rateBytesPerSec: (95 + (i % 4) * 3) * MiB })),
  { at: T + 44_000, kind: 'disk', stream: 'round-1', bytesDone: 120 * MiB, rateBytesPerSec: 96 * MiB },
  { at: T + 47_000, kind: 'disk', stream: 'round-2', bytesDone: 20 * MiB, rateBytesPerSec: 15 * MiB },
  { at: T + 51_000, kind: 'memory', stream: 'memory', bytesDone: 300 * MiB, rateBytesPerSec: 110 * MiB },
  { at: T + 55_000, kind: 'memory', stream: 'memory', bytesDone: 800 * MiB, rateBytesPerSec: 115 * MiB },
];
const pause = { finalSyncMs: 600, switchoverMs: 500, resumeMs: 300, totalMs: 1_400, hypervisorMs: 420 };
const completed: MigrationStory = {
  workflowId: 'migrate-vm-1',
  runId: 'run-1',
  status: 'COMPLETED',
  startTime: new Date(T).toISOString(),
  closeTime: new Date(T + 61_500).toISOString(),
  progress: {
    migrationId: 'migrate-vm-1.run-1',
    instanceId: 'vm-1',
    source: 'node-a',
    destination: 'node-b',
    phase: 'done',
    bytesDone: 8 * MiB,
    bytesTotal: 8 * MiB,
    rateBytesPerSec: 0,
    wireBytes: 6 * MiB,
    round: 2,
    pastPointOfNoReturn: true,
    cancelRequested: false,
    timeline: doneTimeline,
    streams: doneStreams,
    samples: doneSamples,
    pause,
  },
  result: {
    migrationId: 'migrate-vm-1.run-1',
    instanceId: 'vm-1',
    source: 'node-a',
    destination: 'node-b',
    outcome: 'migrated',
    totalMs: 61_400,
    downtimeMs: 1_400,
    hypervisorDowntimeMs: 420,
    pause,
    diskBytes: 10 * GiB,
    diskWireBytes: doneStreams.filter((s) => s.kind === 'disk').reduce((n, s) => n + s.wireBytes, 0),
    memoryBytes: 1 * GiB,
    rounds: 3,
    options: DEFAULT_OPTIONS,
    streams: doneStreams,
    timeline: doneTimeline,
  },
};

// --- a run that never converged: rolled back, then failed (no result, only the failure) ---
const why = 'vm-2 writes its disk faster than the link carries it: after 2 rounds the final sync is projected at 9000 ms, over the 2000 ms downtime budget';
const failed: MigrationStory = {
  workflowId: 'migrate-vm-2',
  status: 'FAILED',
  startTime: new Date(T).toISOString(),
  closeTime: new Date(T + 30_000).toISOString(),
  error: why,
  progress: {
    migrationId: 'migrate-vm-2.run-1',
    instanceId: 'vm-2',
    source: 'node-a',
    destination: 'node-c',
    phase: 'rolled-back',
    bytesDone: 0,
    bytesTotal: 0,
    rateBytesPerSec: 0,
    wireBytes: 0,
    round: 2,
    projectedDowntimeMs: 9_000,
    pastPointOfNoReturn: false,
    cancelRequested: false,
    error: why,
    timeline: [ev('validate', 0), ev('reserve', 200), ev('prepare', 400), ev('track', 1_400), ev('bulk-copy', 1_600), ev('dirty-rounds', 21_600), ev('rolling-back', 28_000, why), ev('rolled-back', 29_500, why)],
    // Older worker: streams but no samples, so the picture falls back to bars.
    streams: [rec('bulk', 'disk', 1_600, 21_600, 2 * GiB), rec('round-1', 'disk', 21_700, 24_700, 300 * MiB), rec('round-2', 'disk', 24_800, 27_900, 290 * MiB)],
    samples: [],
  },
};

// --- still running: in the memory pre-copy, 5 s in ---
const running: MigrationStory = {
  workflowId: 'migrate-vm-3',
  status: 'RUNNING',
  startTime: new Date(T).toISOString(),
  progress: {
    migrationId: 'migrate-vm-3.run-1',
    instanceId: 'vm-3',
    source: 'node-b',
    destination: 'node-a',
    phase: 'memory',
    stream: 'memory',
    bytesDone: 10 * MiB,
    bytesTotal: 10 * MiB,
    rateBytesPerSec: 50 * MiB,
    wireBytes: 7 * MiB,
    disk: { stream: 'round-1', bytesDone: 10 * MiB, bytesTotal: 10 * MiB, rateBytesPerSec: 50 * MiB, wireBytes: 7 * MiB },
    memory: { status: 'active', transferredBytes: 600 * MiB, remainingBytes: 400 * MiB, totalBytes: 1 * GiB, rateBytesPerSec: 100 * MiB, dirtyPagesRate: 1234, iteration: 3, etaMs: 4_000 },
    round: 1,
    projectedDowntimeMs: 300,
    pastPointOfNoReturn: false,
    cancelRequested: false,
    timeline: [ev('validate', 0), ev('reserve', 100), ev('prepare', 200), ev('track', 1_000), ev('bulk-copy', 1_100), ev('dirty-rounds', 11_100), ev('memory', 12_000)],
    streams: [rec('bulk', 'disk', 1_100, 11_100, 1 * GiB), rec('round-1', 'disk', 11_200, 11_900, 10 * MiB, 7 * MiB)],
    samples: [{ at: T + 13_000, kind: 'memory', stream: 'memory', bytesDone: 100 * MiB, rateBytesPerSec: 100 * MiB }],
  },
};
const runningNow = T + 17_000;

// --- terminated before anyone could ask it anything ---
const bare: MigrationStory = { workflowId: 'migrate-vm-4', status: 'TERMINATED', startTime: new Date(T).toISOString(), closeTime: new Date(T + 1_000).toISOString() };

describe('phaseSpans', () => {
  it('turns the timeline into spans relative to the first event, merging repeated events', () => {
    const spans = phaseSpans(completed);
    expect(spans.map((s) => s.phase)).toEqual(['validate', 'reserve', 'prepare', 'track', 'bulk-copy', 'dirty-rounds', 'memory', 'final-sync', 'resume', 'commit', 'cleanup', 'done']);
    expect(spans.find((s) => s.phase === 'bulk-copy')).toMatchObject({ startMs: 2_800, endMs: 42_800, durationMs: 40_000 });
    expect(spans.find((s) => s.phase === 'resume')).toMatchObject({ startMs: 59_400, durationMs: 800, detail: 'QEMU: 420 ms downtime' });
    // Closed on a terminal phase: that phase ends where it starts.
    expect(spans[spans.length - 1]).toMatchObject({ phase: 'done', durationMs: 0 });
  });

  it('ends the open phase of a running migration at now, and of a terminated one at its close', () => {
    const spans = phaseSpans(running, runningNow);
    expect(spans[spans.length - 1]).toMatchObject({ phase: 'memory', startMs: 12_000, endMs: 17_000, durationMs: 5_000 });
    const cut: MigrationStory = { ...running, status: 'TERMINATED', closeTime: new Date(T + 20_000).toISOString() };
    expect(phaseSpans(cut, runningNow).at(-1)).toMatchObject({ phase: 'memory', endMs: 20_000 });
    expect(phaseSpans(bare)).toEqual([]);
  });

  it('places the pause from the recorded total before commit, else from final-sync to commit', () => {
    expect(pauseWindow(completed)).toEqual({ startMs: 58_800, endMs: 60_200, from: 'parts' });
    const noParts: MigrationStory = { ...completed, result: { ...completed.result!, pause: undefined }, progress: { ...completed.progress!, pause: undefined } };
    expect(pauseWindow(noParts)).toEqual({ startMs: 58_800, endMs: 60_200, from: 'timeline' });
    expect(pauseWindow(failed)).toBeUndefined();
  });
});

describe('storyJson', () => {
  it('has phases that sum to the run, the pause, and each stream with its rate', () => {
    const j = storyJson(completed);
    expect(j).toMatchObject({ workflowId: 'migrate-vm-1', status: 'COMPLETED', instance: 'vm-1', source: 'node-a', destination: 'node-b', outcome: 'migrated', reason: null, error: null, rounds: 3, live: null });
    expect(j.phases.reduce((n, s) => n + s.durationMs, 0)).toBe(completed.result!.totalMs);
    expect(j.pause).toEqual({ ...pause, startMs: 58_800, endMs: 60_200 });
    const bulk = j.streams.find((s) => s.stream === 'bulk')!;
    expect(bulk).toMatchObject({ kind: 'disk', startMs: 2_800, endMs: 42_800, durationMs: 40_000, bytes: 4 * GiB });
    expect(bulk.rateBytesPerSec).toBe(Math.round((4 * GiB) / 40));
    expect(j.streams.find((s) => s.stream === 'memory')!.rateBytesPerSec).toBe(Math.round(GiB / 10));
    expect(j.streams.map((s) => s.stream)).toEqual(['bulk', 'round-1', 'round-2', 'memory', 'final']);
    expect(j.bytes).toEqual({ diskSize: 10 * GiB, diskSent: 4 * GiB + 348 * MiB, diskWire: 2.5 * GiB + 236 * MiB, memory: GiB });
    expect(j.samples).toHaveLength(doneSamples.length);
    expect(j.samples[0]).toMatchObject({ atMs: 4_800, kind: 'disk', stream: 'bulk' });
    expect(JSON.parse(JSON.stringify(j))).toEqual(j);
  });

  it('says why a failed run rolled back, and shows a running one live', () => {
    expect(storyJson(failed)).toMatchObject({ outcome: 'rolled-back', error: why, pause: null, rounds: 2, live: null });
    const r = storyJson(running, runningNow);
    expect(r.outcome).toBe('running');
    expect(r.totalMs).toBe(17_000);
    expect(r.live).toMatchObject({ phase: 'memory', stream: 'memory', round: 1, memory: { iteration: 3, dirtyPagesRate: 1234 }, disk: { stream: 'round-1' } });
    expect(storyJson(bare)).toMatchObject({ outcome: 'terminated', phases: [], streams: [], instance: null });
  });
});

describe('renderStoryText', () => {
  it('tells a completed migration: header, phases with durations, the pause in parts, streams', () => {
    const text = renderStoryText(completed);
    const lines = text.split('\n');
    expect(lines[0]).toBe('migrate-vm-1: COMPLETED, vm-1 node-a -> node-b, migrated in 1 min 01 s');
    expect(text).toMatch(/^ {2}validate\s+\+0\.0 s\s+300 ms$/m);
    expect(text).toMatch(/^ {2}bulk-copy\s+\+2\.8 s\s+40\.0 s$/m);
    expect(text).toMatch(/^ {2}memory\s+\+48\.8 s\s+10\.0 s$/m);
    expect(text).toMatch(/^ {2}resume\s+\+59\.4 s\s+800 ms\s+QEMU: 420 ms downtime$/m);
    expect(text).toMatch(/^ {2}commit\s+\+60\.2 s\s+200 ms$/m);
    expect(text).toMatch(/^ {2}done\s+\+61\.4 s\s+0 ms$/m);
    expect(text).toMatch(/^pause 1\.40 s \(from \+58\.8 s\)$/m);
    expect(text).toMatch(/^ {2}final disk round\s+600 ms$/m);
    expect(text).toMatch(/^ {2}memory switchover\s+500 ms$/m);
    expect(text).toMatch(/^ {2}destination start\s+300 ms$/m);
    expect(text).toMatch(/^ {2}total\s+1\.40 s$/m);
    expect(text).toMatch(/^ {2}hypervisor's own figure\s+420 ms$/m);
    expect(text).toMatch(/^ {2}bulk\s+disk\s+4\.0 GiB\s+2\.5 GiB\s+102\.4 MiB\/s\s+40\.0 s$/m);
    expect(text).toMatch(/^ {2}memory\s+memory\s+1\.0 GiB\s+1\.0 GiB\s+102\.4 MiB\/s\s+10\.0 s$/m);
    expect(text).toContain('rounds 3, disk size 10.0 GiB');
    expect(text).not.toMatch(/^(reason|error|now):/m);
  });

  it('gives the reason of a failed run and the live progress of a running one', () => {
    const f = renderStoryText(failed);
    expect(f.split('\n')[0]).toBe('migrate-vm-2: FAILED, vm-2 node-a -> node-c, rolled-back in 29.5 s');
    expect(f).toContain(`error: ${why}`);
    expect(f.split(why)).toHaveLength(2); // said once, not again on each rollback phase
    expect(f).toMatch(/^ {2}rolling-back\s+\+28\.0 s\s+1\.50 s$/m);
    expect(f).not.toMatch(/^pause/m);

    const r = renderStoryText(running, runningNow);
    expect(r.split('\n')[0]).toBe('migrate-vm-3: RUNNING, vm-3 node-b -> node-a, running for 17.0 s');
    expect(r).toMatch(/^ {2}memory\s+\+12\.0 s\s+5\.00 s so far$/m);
    expect(r).toContain('now: memory, round 1, projected pause 300 ms');
    expect(r).toContain('  disk round-1 (last disk stream): 10.0 MiB/10.0 MiB at 50.0 MiB/s, wire 7.0 MiB');
    expect(r).toContain('  memory (active): 600.0 MiB sent, 400.0 MiB left of 1.0 GiB at 100.0 MiB/s, ETA 4.00 s, iteration 3, 1234 dirty pages/s');

    expect(renderStoryText(bare)).toBe('migrate-vm-4: TERMINATED, terminated');
  });
});

describe('renderStorySvg', () => {
  // The text of every <text> element, entities decoded ('->' is written '-&gt;').
  const texts = (svg: string) =>
    [...svg.matchAll(/<text[^>]*>([^<]*)<\/text>/g)].map((m) => m[1]!.replace(/&gt;/g, '>').replace(/&lt;/g, '<').replace(/&quot;/g, '"').replace(/&amp;/g, '&'));

  it('draws the phases, the pause and the throughput of a completed migration', async () => {
    const svg = await renderStorySvg(completed);
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg.trimEnd().endsWith('</svg>')).toBe(true);
    const t = texts(svg);
    expect(t).toContain('bulk-copy');
    expect(t).toContain('memory');
    expect(t).toContain('pause 1.40 s');
    expect(t).toContain('vm-1: node-a -> node-b, migrated');
    expect(t).toContain('MiB/s');
    // Legend of the second panel: the two stream kinds.
    expect(t).toContain('disk');
    // One line per sampled stream (bulk, round-1, round-2, memory): the throughput is drawn, not just the axes.
    expect(svg.match(/class="mark-line/g)?.length).toBe(new Set(doneSamples.map((s) => s.stream)).size);
    // The bulk copy's line goes through each of its 16 samples: 15 segments.
    const lines = [...svg.matchAll(/aria-roledescription="line mark" d="([^"]*)"/g)].map((m) => m[1]!.split('L').length - 1);
    expect(Math.max(...lines)).toBe(15);
  });

  it('shares one time axis between the panels', () => {
    const spec = storySpec(completed) as unknown as { vconcat: { layer: { encoding: { x: { scale: { domain: number[] } } } }[] }[] };
    const domains = spec.vconcat.flatMap((p) => p.layer.map((l) => l.encoding.x.scale.domain));
    expect(new Set(domains.map((d) => d.join(',')))).toEqual(new Set(['0,61.4']));
  });

  it('draws a failed run with stream bars and no pause, a running one, and an empty one', async () => {
    const f = texts(await renderStorySvg(failed));
    expect(f).toContain('rolled-back');
    expect(f).toContain('round-2'); // a bar label: no samples, so the streams are bars
    expect(f.some((s) => s.startsWith('pause'))).toBe(false);
    expect(f).not.toContain('commit'); // only the phases the run went through

    const r = await renderStorySvg(running, runningNow);
    expect(r).toMatch(/^<svg[\s\S]*<\/svg>\s*$/);
    expect(texts(r)).toContain('vm-3: node-b -> node-a, running');

    const b = texts(await renderStorySvg(bare));
    expect(b).toContain('no phase recorded yet');
    expect(b).toContain('no throughput recorded yet');
  });
});
