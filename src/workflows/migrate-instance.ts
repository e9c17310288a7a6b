// The migration protocol: the ten phases of docs/design, each an activity on the worker of the host
// it touches. Tunables live in src/shared/options.ts; this file is only the order of things, the
// rollback of each step next to it, and the point of no return.
//
// Deterministic code only: no Node built-ins, no I/O; activities are imported as types.
import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
  log,
} from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control.js';
import type { NodeActivities } from '../activities/node.js';
import type { Phase } from '../shared/names.js';
import { ErrorTypes } from '../shared/errors.js';
import { control, controlForward, nodeActivities } from './proxies.js';
import { applyReport, closeStory, newProgress } from './progress-state.js';
import { DEFAULT_OPTIONS, memoryDowntimeMs, type MigrationOptions } from '../shared/options.js';
import {
  cancelUpdate,
  proceedSignal,
  progressQuery,
  progressSignal,
  type MigrateInput,
  type MigrationResult,
  type PauseParts,
  type StreamRecord,
} from '../shared/messages.js';
import { SA_DESTINATION, SA_INSTANCE, SA_OUTCOME, SA_PHASE, SA_SOURCE } from '../shared/search-attributes.js';
import { projectFinalRoundMs } from '../dataplane/projection.js';
import { totalDiskBytes } from '../shared/instance.js';

export async function migrateInstance(input: MigrateInput): Promise<MigrationResult> {
  // Unique per run: the workflow id is reused by the next migration of the same instance.
  const migrationId = `${workflowInfo().workflowId}.${workflowInfo().runId}`;
  const started = Date.now();
  // Runs recorded before the story was kept (no patch marker) replay without these commands.
  const story = patched('ferry-story-v1');
  // Searchable from the first moment, however the run was started (a UI start sets none): the
  // CLI finds a migration by instance whatever its workflow id.
  if (story && typeof input.instanceId === 'string' && typeof input.destination === 'string') {
    upsertSearchAttributes([
      { key: SA_INSTANCE, value: input.instanceId.slice(0, 200) },
      { key: SA_DESTINATION, value: input.destination.slice(0, 200) },
      { key: SA_PHASE, value: 'validate' },
    ]);
  }

  const progress = newProgress(migrationId, input);
  const streams = progress.streams!;
  let cancelReason: string | undefined;
  // True while the hypervisor moves memory in a call that also hands the guest over.
  let memoryUninterruptible = false;
  // Everything before the point of no return runs in this scope; cancelling it rolls back.
  const beforeSwitchover = new CancellationScope();

  setHandler(progressQuery, () => progress);
  setHandler(progressSignal, (r) => applyReport(progress, r));
  setHandler(
    cancelUpdate,
    (reason) => {
      cancelReason = reason || 'cancelled by operator';
      progress.cancelRequested = true;
      beforeSwitchover.cancel();
      return `cancelling ${input.instanceId} in phase ${progress.phase}: rolling back`;
    },
    {
      validator: (_reason: string) => {
        if (memoryUninterruptible) {
          throw ApplicationFailure.nonRetryable(
            `cannot cancel now: the hypervisor is moving ${input.instanceId}'s memory to ${input.destination} and hands the guest over at its end; it cannot be interrupted safely. If it fails the migration rolls back by itself, otherwise it finishes.`,
            'TooLateToCancel',
          );
        }
        if (progress.pastPointOfNoReturn) {
          throw ApplicationFailure.nonRetryable(
            `too late to cancel: ${input.instanceId} is already switching over to ${input.destination} (phase ${progress.phase}); the migration can only finish`,
            'TooLateToCancel',
          );
        }
        if (['rolling-back', 'rolled-back', 'done', 'failed'].includes(progress.phase)) {
          throw ApplicationFailure.nonRetryable(`nothing to cancel: migration is ${progress.phase}`, 'NothingToCancel');
        }
      },
    },
  );

  const released = new Set<Phase>();
  setHandler(proceedSignal, (phase) => void released.add(phase));
  /** A breakpoint after `phase`, when the operator asked for one. Cancellable like the rest. */
  const hold = async (phase: Phase) => {
    if (!options.holdAfter.includes(phase)) return;
    progress.heldAfter = phase;
    await condition(() => released.has(phase));
    progress.heldAfter = undefined;
  };

  const enter = (phase: Phase, detail?: string) => {
    progress.phase = phase;
    progress.timeline.push({ phase, at: Date.now(), detail });
    upsertSearchAttributes([{ key: SA_PHASE, value: phase }]);
    log.info('phase', { phase, detail });
  };

  // --- 1. validate: no side effect before this passes; the controller resolves the options ---
  enter('validate');
  let plan: Awaited<ReturnType<ControlActivities['validateMigration']>>;
  try {
    plan = await control.validateMigration({ migrationId, instanceId: input.instanceId, destination: input.destination, options: input.options });
  } catch (err) {
    progress.error = describe(err);
    enter('failed', progress.error);
    if (story) closeStory('failed', progress.error);
    throw err;
  }
  const { spec, source, destination } = plan;
  // A plan recorded before the controller resolved options carries none: the workflow's own defaults.
  const options: MigrationOptions = plan.options ?? { ...DEFAULT_OPTIONS, ...(input.options as Partial<MigrationOptions> | undefined) };
  progress.options = options;
  progress.source = source.name;
  upsertSearchAttributes([
    { key: SA_INSTANCE, value: spec.id },
    { key: SA_SOURCE, value: source.name },
    { key: SA_DESTINATION, value: destination.name },
  ]);
  const src = nodeActivities(source.name);
  const dst = nodeActivities(destination.name);
  // The migration log row is open from here: every way out below closes it.
  let logClosed = false;
  try {
    return await afterValidate();
  } catch (err) {
    if (!logClosed && story) {
      progress.error ??= describe(err);
      enter('failed', progress.error);
      if (story) closeStory('failed', progress.error);
      await CancellationScope.nonCancellable(() =>
        controlForward.finishMigration({ migrationId, outcome: 'failed' as const, summary: { reason: progress.error, timeline: progress.timeline } }),
      );
    }
    throw err;
  }

  async function afterValidate(): Promise<MigrationResult> {
  let facts!: Awaited<ReturnType<NodeActivities['checkSource']>>;
  // Before the story patch the checks ran here, outside the rollback scope; replays keep that order.
  if (!story) [facts] = await Promise.all([src.quick.checkSource({ spec }), dst.quick.checkDestination({ migrationId, spec })]);

  // Compensations, pushed as each step succeeds and run in reverse on rollback.
  const undo: { name: string; run: () => Promise<unknown> }[] = [];
  let diskWireBytes = 0;
  let rounds = 0;
  let pausedAt = 0;
  let resumedAt = 0;
  let diskIdentical: boolean | undefined;
  let disksIdentical: Record<string, boolean> | undefined;
  let memory: { totalMs: number; downtimeMs?: number; transferredBytes: number; note?: string } = { totalMs: 0, transferredBytes: 0 };
  // Where the hypervisor hands over decides where the final sync runs (HypervisorDriver.handover).
  let memoryHandsOver = false;
  let memoryRecord: StreamRecord | undefined;
  const pause: PauseParts = { finalSyncMs: 0, switchoverMs: 0, resumeMs: 0, totalMs: 0 };
  let handedOver = false;
  let dest!: Awaited<ReturnType<NodeActivities['prepareDestination']>>;

  // One stream, resent through a freshly (re)opened receiver if the destination worker died.
  // Rolling forward (`forward`), it never gives up: the guest is already on the destination.
  const stream = async (streamId: string, round: number | undefined, forward = false) => {
    const via = forward ? src.forward : src.long;
    for (let attempt = 1; ; attempt++) {
      try {
        const startedAt = Date.now();
        const r = await via.sendDisk({ migrationId, spec, endpoints: dest.endpoints, streamId, round, options });
        diskWireBytes += r.wireBytes;
        streams.push({ stream: streamId, kind: 'disk', startedAt, endedAt: Date.now(), bytes: r.doneBytes, wireBytes: r.wireBytes });
        return r;
      } catch (err) {
        if (isCancellation(err) || (!forward && (attempt >= 3 || !isRetryable(err)))) throw err;
        log.warn('stream failed; reopening the receiver', { streamId, attempt, error: String(err) });
        dest = await (forward ? dst.forward : dst.quick).prepareDestination({ migrationId, spec, tls: options.tls });
      }
    }
  };

  /** The last dirty blocks, with the source stopped; then, if asked, every disk's digests on both sides. */
  const finalSync = async (forward: boolean) => {
    const t0 = Date.now();
    rounds += 1;
    await stream('final', rounds, forward);
    pause.finalSyncMs = Date.now() - t0;
    if (!options.verifyDisk) return;
    const digests = async () => {
      const [s, d] = forward ? [src.forward, dst.forward] : [src.long, dst.long];
      return Promise.all([s.digestDisks({ spec, side: 'source' }), d.digestDisks({ spec, side: 'destination' })]);
    };
    const differ = (x: Record<string, string>, y: Record<string, string>) => spec.disks.some((disk) => x[disk.vdev] !== y[disk.vdev]);
    let [a, b] = await digests();
    if (differ(a, b) && forward) {
      // No rollback once handed over: resend the whole (stopped) source disks, then check again.
      log.error('disk digests differ after the final sync; resending the whole disks', { source: a, destination: b });
      await stream('final-full', undefined, true);
      [a, b] = await digests();
    }
    disksIdentical = Object.fromEntries(spec.disks.map((disk) => [disk.vdev, a[disk.vdev] === b[disk.vdev]]));
    diskIdentical = !differ(a, b);
    if (!diskIdentical) {
      throw ApplicationFailure.nonRetryable(
        forward
          ? `disk digests differ after the final sync (source ${JSON.stringify(a)}, destination ${JSON.stringify(b)}); ${spec.id} waits paused on ${destination.name} and the inventory still names ${source.name}: inspect both disks`
          : `disk digests differ after the final sync (source ${JSON.stringify(a)}, destination ${JSON.stringify(b)}); rolled back, the source keeps running`,
        'DiskMismatch',
      );
    }
  };

  try {
    await beforeSwitchover.run(async () => {
      // Both hosts' checks, inside the scope: a node that never answers ends in a rollback that
      // closes the migration log, not in a run that leaves it open.
      if (story) [facts] = await Promise.all([src.quick.checkSource({ spec }), dst.quick.checkDestination({ migrationId, spec })]);
      memoryHandsOver = facts.handover === 'paused-on-destination';

      // --- 2. reserve capacity on the destination ---
      enter('reserve');
      await control.reserveCapacity({ migrationId, instanceId: spec.id, node: destination.name });
      undo.push({ name: 'release reservation', run: () => control.releaseReservation({ migrationId }) });
      await hold('reserve');

      // --- 3. prepare the destination: disk, paused instance waiting for memory, receiver ---
      enter('prepare');
      undo.push({ name: 'remove destination', run: () => dst.quick.abortDestination({ migrationId, spec }) });
      dest = await dst.quick.prepareDestination({ migrationId, spec, tls: options.tls });
      await hold('prepare');

      // --- 4. dirty tracking on the source disk, before the first byte is read ---
      enter('track');
      undo.push({ name: 'stop dirty tracking', run: () => src.quick.stopDirtyTracking({ spec }) });
      await src.quick.startDirtyTracking({ spec });
      await hold('track');

      // --- 5. bulk copy ---
      enter('bulk-copy');
      const bulk = await stream('bulk', undefined);
      let rate = bulk.elapsedMs > 0 ? (bulk.doneBytes / bulk.elapsedMs) * 1000 : 0;
      await hold('bulk-copy');

      // --- 6. dirty rounds until the final round is projected to fit the downtime budget ---
      enter('dirty-rounds');
      for (;;) {
        rounds += 1;
        progress.round = rounds;
        const r = await stream(`round-${rounds}`, rounds);
        if (r.elapsedMs > 0 && r.doneBytes > 0) rate = (r.doneBytes / r.elapsedMs) * 1000;
        const projected = projectFinalRoundMs({
          lastRoundBytes: r.doneBytes,
          lastRoundMs: r.elapsedMs,
          rateBytesPerSec: rate,
        });
        progress.projectedDowntimeMs = projected;
        log.info('dirty round', { round: rounds, bytes: r.doneBytes, ms: r.elapsedMs, projected });
        if (projected <= options.downtimeMs) break;
        if (rounds >= options.maxRounds) {
          throw ApplicationFailure.nonRetryable(
            `${spec.id} writes its disk faster than the link carries it: after ${rounds} rounds the final sync is projected at ${projected} ms, over the ${options.downtimeMs} ms downtime budget. Raise --downtime or --max-rounds, lift the bandwidth cap, or migrate when the guest is quieter.`,
            ErrorTypes.WontConverge,
          );
        }
      }
      await hold('dirty-rounds');

      // --- 7. memory pre-copy; resolves with the source paused, block devices still active ---
      enter('memory');
      memoryRecord = { stream: 'memory', kind: 'memory', startedAt: Date.now(), endedAt: 0, bytes: 0, wireBytes: 0 };
      undo.push({ name: 'cancel memory migration', run: () => src.quick.cancelMigration({ spec }) });
      const migrateMemory = () =>
        src.long.migrateMemory({
          migrationId,
          spec,
          memoryUri: dest.memoryUri,
          destinationDisks: dest.disks,
          options,
          memoryDowntimeMs: memoryDowntimeMs(options.downtimeMs, progress.projectedDowntimeMs),
        });
      if (memoryHandsOver) {
        // A memory step that hands over cannot be interrupted safely: cancel requests are refused
        // while it runs and Temporal cancellation is shielded. A failure still rolls back (the
        // guest is resumed on the source, or the driver found it there); success means the
        // destination holds it, paused.
        memoryUninterruptible = true;
        try {
          await CancellationScope.nonCancellable(migrateMemory);
          endMemoryRecord();
          progress.pastPointOfNoReturn = true;
          handedOver = true;
        } finally {
          memoryUninterruptible = false;
        }
        pausedAt = Date.now();
        return; // the final sync happens past the point of no return, below
      }
      await migrateMemory();
      endMemoryRecord();
      pausedAt = Date.now();
      await hold('memory');

      // --- 8a. final disk sync, source paused: the destination never runs on stale blocks ---
      enter('final-sync');
      await finalSync(false);
    });
  } catch (err) {
    const reason = cancelReason ?? describe(err);
    progress.error = reason;
    enter('rolling-back', reason);
    await CancellationScope.nonCancellable(async () => {
      for (const step of undo.reverse()) {
        try {
          await step.run();
        } catch (e) {
          // Keep undoing: one failed compensation must not strand the others. The log says which.
          log.error('compensation failed', { step: step.name, error: String(e) });
        }
      }
      enter('rolled-back', reason);
      if (story) closeStory('rolled-back', reason);
      else upsertSearchAttributes([{ key: SA_OUTCOME, value: 'rolled-back' }]);
      await control.finishMigration({ migrationId, outcome: 'rolled-back' as const, summary: { reason, timeline: progress.timeline } });
      logClosed = true;
    });
    if (cancelReason || isCancellation(err)) {
      return result('rolled-back', reason);
    }
    throw err;
  }

  // === POINT OF NO RETURN ===
  // Until here the source held the only running copy and every step had an undo. `switchover`
  // lets the hypervisor send the last memory pages and CPU state (a driver that hands over paused
  // on the destination already did, and the final sync happens here); from then on the destination is the instance and the workflow
  // only rolls forward: cancel requests are refused, Temporal cancellation is shielded, and
  // failed steps are retried until they succeed.
  progress.pastPointOfNoReturn = true;
  const srcForward = src.forward;
  const dstForward = dst.forward;
  await CancellationScope.nonCancellable(async () => {
    if (handedOver) {
      enter('final-sync', 'the guest waits paused on the destination');
      await finalSync(true);
    }
    enter('resume');
    const t0 = Date.now();
    memory = await srcForward.switchover({ spec });
    const t1 = Date.now();
    if (memory.note) progress.timeline.push({ phase: 'resume', at: Date.now(), detail: memory.note });
    await dstForward.resume({ migrationId, spec });
    resumedAt = Date.now();
    Object.assign(pause, { switchoverMs: t1 - t0, resumeMs: resumedAt - t1, totalMs: resumedAt - pausedAt, hypervisorMs: memory.downtimeMs });
    progress.pause = pause;
    if (memoryRecord) memoryRecord.bytes = memoryRecord.wireBytes = memory.transferredBytes;
    progress.projectedDowntimeMs = resumedAt - pausedAt;

    // --- 9. commit the inventory: one idempotent transaction ---
    enter('commit');
    await controlForward.commitMigration({ migrationId, instanceId: spec.id, source: source.name, destination: destination.name, disks: dest.disks });

    // --- 10. clean up the source ---
    enter('cleanup');
    await srcForward.retire({ spec, keepDisks: options.keepSourceDisks });
    await dstForward.closeReceiver({ migrationId });
    enter('done');
    if (story) closeStory('migrated');
    else upsertSearchAttributes([{ key: SA_OUTCOME, value: 'migrated' }]);
    await controlForward.finishMigration({ migrationId, outcome: 'succeeded' as const, summary: { ...result('migrated'), timeline: progress.timeline } });
    logClosed = true;
  });
  return result('migrated');

  function endMemoryRecord() {
    if (!memoryRecord) return;
    memoryRecord.endedAt = Date.now();
    memoryRecord.bytes = memoryRecord.wireBytes = progress.memory?.transferredBytes ?? 0;
    streams.push(memoryRecord);
  }


  function result(outcome: MigrationResult['outcome'], reason?: string): MigrationResult {
    return {
      migrationId,
      instanceId: spec.id,
      source: source.name,
      destination: destination.name,
      outcome,
      reason,
      totalMs: Date.now() - started,
      downtimeMs: pausedAt && resumedAt ? resumedAt - pausedAt : 0,
      hypervisorDowntimeMs: memory.downtimeMs,
      pause: resumedAt ? pause : undefined,
      options,
      streams,
      diskBytes: totalDiskBytes(spec),
      diskWireBytes,
      memoryBytes: memory.transferredBytes,
      rounds,
      diskIdentical,
      disksIdentical,
      timeline: progress.timeline,
    };
  }
  }
}

function isRetryable(err: unknown): boolean {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return !(cause instanceof ApplicationFailure && cause.nonRetryable);
}

function describe(err: unknown): string {
  if (err instanceof ActivityFailure && err.cause) return err.cause.message;
  if (err instanceof Error) return err.message;
  return String(err);
}
