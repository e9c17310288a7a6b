// What the migration workflow tells its watchers: the progress it answers the `progress` query
// with (live disk and memory streams, bounded throughput samples), and the outcome it leaves in
// search attributes and the memo for `ferry list`. Deterministic code only.
import { upsertMemo, upsertSearchAttributes } from '@temporalio/workflow';
import { MAX_SAMPLES, type MigrateInput, type MigrationProgress, type ProgressReport } from '../shared/messages.js';
import { SA_OUTCOME } from '../shared/search-attributes.js';

export function newProgress(migrationId: string, input: MigrateInput): MigrationProgress {
  return {
    migrationId,
    instanceId: input.instanceId,
    destination: input.destination,
    phase: 'validate',
    bytesDone: 0,
    bytesTotal: 0,
    rateBytesPerSec: 0,
    wireBytes: 0,
    round: 0,
    pastPointOfNoReturn: false,
    cancelRequested: false,
    timeline: [],
    streams: [],
    samples: [],
  };
}

/** A node activity's progress signal: the disk or the memory stream, and one throughput sample. */
export function applyReport(progress: MigrationProgress, r: ProgressReport): void {
  const kind = r.kind ?? 'disk';
  progress.stream = r.stream;
  if (kind === 'memory') {
    const remaining = r.remainingBytes ?? Math.max(0, r.bytesTotal - r.bytesDone);
    progress.memory = {
      status: r.status ?? 'active',
      transferredBytes: r.bytesDone,
      remainingBytes: remaining,
      totalBytes: r.bytesTotal,
      rateBytesPerSec: r.rateBytesPerSec,
      dirtyPagesRate: r.dirtyPagesRate,
      iteration: r.iteration,
      etaMs: eta(remaining, r.rateBytesPerSec),
    };
  } else {
    // The flat fields stay the disk's, for clients that read only them.
    progress.bytesDone = r.bytesDone;
    progress.bytesTotal = r.bytesTotal;
    progress.rateBytesPerSec = r.rateBytesPerSec;
    progress.wireBytes = r.wireBytes;
    progress.disk = { stream: r.stream, bytesDone: r.bytesDone, bytesTotal: r.bytesTotal, rateBytesPerSec: r.rateBytesPerSec, wireBytes: r.wireBytes, etaMs: eta(r.bytesTotal - r.bytesDone, r.rateBytesPerSec) };
  }
  const samples = progress.samples ?? (progress.samples = []);
  samples.push({ at: Date.now(), kind, stream: r.stream, bytesDone: r.bytesDone, rateBytesPerSec: r.rateBytesPerSec });
  // Bounded state: past the cap, keep every other sample (the picture keeps its shape).
  if (samples.length > MAX_SAMPLES) progress.samples = samples.filter((_, i) => i % 2 === 0);
}

/** The outcome as a search attribute and the reason in the memo: `ferry list` shows both without a query. */
export function closeStory(outcome: 'migrated' | 'rolled-back' | 'failed', reason?: string): void {
  upsertSearchAttributes([{ key: SA_OUTCOME, value: outcome }]);
  if (reason) upsertMemo({ reason: reason.slice(0, 2000) });
}

/** Time left at `rate` bytes/s, when there is a rate to go by. */
function eta(remainingBytes: number, rate: number): number | undefined {
  return rate > 0 ? Math.round((Math.max(0, remainingBytes) / rate) * 1000) : undefined;
}
