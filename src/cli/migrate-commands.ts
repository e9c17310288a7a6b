// `ferry migrate`, `status`, `cancel`, `list`, `history`, `replay`: the commands that talk to
// Temporal about migrations.
import { readFile, writeFile } from 'node:fs/promises';
import { randomUUID } from 'node:crypto';
import { WorkflowExecutionAlreadyStartedError, WorkflowFailedError, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { CHECK_WORKFLOW_TYPE, CONTROL_TASK_QUEUE, ID_PATTERN, MIGRATE_WORKFLOW_TYPE, PHASES, migrationWorkflowId } from '../shared/names.js';
import { cancelUpdate, progressQuery, type MigrateInput, type MigrationProgress, type MigrationResult } from '../shared/messages.js';
import { SA_DESTINATION, SA_INSTANCE } from '../shared/search-attributes.js';
import type { MigrationOptionsInput } from '../shared/options.js';
import { optionProblems } from '../shared/options-schema.js';
import { ErrorTypes } from '../shared/errors.js';
import { workflowsPath } from '../workers/workflows-path.js';
import { CliError, EXIT, type CliContext } from './context.js';
import { failureMessage, findMigration } from './find-migration.js';
import { formatBytes, watchProgress } from './progress.js';

export interface MigrateFlags {
  to: string;
  wait?: boolean;
  detach?: boolean;
  json?: boolean;
  codec?: string;
  chunkSize?: string;
  bandwidth?: string;
  downtime?: string;
  maxRounds?: string;
  tls?: boolean;
  verify?: boolean;
  keepSource?: boolean;
}

/**
 * The options given on the command line, as written: the controller lays them over its config
 * file's defaults. Parsed here too (the same schema), so a bad value is refused at once, by name.
 */
const FLAG: Record<string, string> = {
  codec: '--codec',
  chunkSize: '--chunk-size',
  bandwidth: '--bandwidth',
  downtime: '--downtime',
  maxRounds: '--max-rounds',
};

export function migrationOptions(f: MigrateFlags): MigrationOptionsInput {
  const o: MigrationOptionsInput = {
    codec: f.codec as MigrationOptionsInput['codec'],
    chunkSize: f.chunkSize,
    bandwidth: f.bandwidth,
    downtime: f.downtime,
    maxRounds: f.maxRounds,
    tls: f.tls === false ? false : undefined,
    verify: f.verify || undefined,
    keepSource: f.keepSource || undefined,
  };
  for (const k of Object.keys(o) as (keyof MigrationOptionsInput)[]) if (o[k] === undefined) delete o[k];
  const problems = optionProblems(o);
  if (problems.length) throw new CliError(problems.map((p) => `${FLAG[p.key] ?? p.key}: ${p.message}`).join('; '), EXIT.usage);
  return o;
}

/** Exit codes for the controller's refusals: what a script can branch on. */
function exitFor(type: string | undefined): number {
  if (type === ErrorTypes.BadInput) return EXIT.usage;
  if (type === ErrorTypes.UnknownInstance || type === ErrorTypes.UnknownNode) return EXIT.notFound;
  return EXIT.refused;
}

export async function migrate(ctx: CliContext, instanceId: string, f: MigrateFlags): Promise<number> {
  if (!ID_PATTERN.test(instanceId)) throw new CliError(`invalid instance id ${JSON.stringify(instanceId)}: use lower-case letters, digits and dashes`, EXIT.usage);
  if (!ID_PATTERN.test(f.to)) throw new CliError(`invalid node name ${JSON.stringify(f.to)}`, EXIT.usage);
  const input: MigrateInput = { instanceId, destination: f.to, options: migrationOptions(f) };
  const client = await ctx.client();
  // The controller's own checks first, with no side effect: nothing starts that it would refuse.
  try {
    await client.workflow.execute(CHECK_WORKFLOW_TYPE, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: `check-${instanceId}-${randomUUID()}`,
      args: [input],
      workflowExecutionTimeout: '2m',
    });
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      const { message, type } = failureMessage(err);
      throw new CliError(`${instanceId} -> ${f.to} refused${type ? ` (${type})` : ''}: ${message}`, exitFor(type));
    }
    throw err;
  }
  let handle: WorkflowHandle;
  try {
    handle = await client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
      taskQueue: CONTROL_TASK_QUEUE,
      workflowId: migrationWorkflowId(instanceId),
      args: [input],
      typedSearchAttributes: [
        { key: SA_INSTANCE, value: instanceId },
        { key: SA_DESTINATION, value: f.to },
      ],
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new CliError(`a migration of ${instanceId} is already running (${migrationWorkflowId(instanceId)}): \`ferry status ${instanceId}\``, EXIT.refused);
    }
    throw err;
  }
  if (f.detach) {
    out(f.json, { workflowId: handle.workflowId, runId: (handle as { firstExecutionRunId?: string }).firstExecutionRunId }, `started ${handle.workflowId}`);
    return EXIT.ok;
  }
  if (!f.json) process.stderr.write(`migrating ${instanceId} to ${f.to} (${handle.workflowId}); Ctrl-C detaches, \`ferry cancel ${instanceId}\` cancels\n`);
  await watchProgress(handle, { tty: !f.json && process.stderr.isTTY === true });
  return printResult(handle, f.json);
}

async function printResult(handle: WorkflowHandle, json?: boolean): Promise<number> {
  try {
    const r = (await handle.result()) as MigrationResult;
    out(json, r, summarize(r));
    return r.outcome === 'migrated' ? EXIT.ok : EXIT.rolledBack;
  } catch (err) {
    if (err instanceof WorkflowFailedError) {
      const { message, type } = failureMessage(err);
      out(json, { outcome: 'failed', error: message, type }, `failed: ${message}`);
      return EXIT.failed;
    }
    throw err;
  }
}

export function summarize(r: MigrationResult): string {
  const lines = [
    `${r.instanceId}: ${r.outcome}${r.reason ? ` (${r.reason})` : ''}`,
    `  ${r.source} -> ${r.destination}, total ${(r.totalMs / 1000).toFixed(1)} s, downtime ${r.downtimeMs} ms${r.hypervisorDowntimeMs !== undefined ? ` (hypervisor: ${r.hypervisorDowntimeMs} ms)` : ''}`,
    `  disk ${formatBytes(r.diskBytes)} sent as ${formatBytes(r.diskWireBytes)} on the wire in ${r.rounds} dirty round(s); memory ${formatBytes(r.memoryBytes)}${r.diskIdentical !== undefined ? `; disks identical: ${r.diskIdentical}` : ''}`,
    '  timeline:',
  ];
  const t0 = r.timeline[0]?.at ?? 0;
  for (const e of r.timeline) lines.push(`    +${((e.at - t0) / 1000).toFixed(1).padStart(7)} s  ${e.phase}${e.detail ? `: ${e.detail}` : ''}`);
  return lines.join('\n');
}

/** The run's own state: the progress query (needs a controller worker), else what Temporal alone knows. */
export async function readStory(handle: WorkflowHandle) {
  const d = await handle.describe();
  let progress: MigrationProgress | undefined;
  // A query needs a controller worker to answer; right after a workflow closes it may briefly
  // not. Without an answer, the status alone is still useful.
  for (let attempt = 0; attempt < 3 && !progress; attempt++) {
    try {
      progress = await handle.query(progressQuery);
    } catch {
      if (attempt < 2) await new Promise((r) => setTimeout(r, 1000));
    }
  }
  let result: MigrationResult | undefined;
  let error: string | undefined;
  if (d.status.name === 'COMPLETED') {
    result = (await handle.result().catch(() => undefined)) as MigrationResult | undefined;
    if (result?.outcome === 'rolled-back') error = result.reason;
  } else if (d.status.name !== 'RUNNING') {
    error = await handle.result().then(
      () => undefined,
      (err: unknown) => failureMessage(err).message,
    );
  }
  error ??= progress?.error;
  return {
    workflowId: d.workflowId,
    runId: d.runId,
    status: d.status.name,
    startTime: d.startTime.toISOString(),
    closeTime: d.closeTime?.toISOString(),
    progress,
    result,
    error,
  };
}

export async function status(ctx: CliContext, id: string, f: { json?: boolean }): Promise<number> {
  const story = await readStory(await findMigration(ctx, id));
  const p = story.progress;
  const lines = [`${story.workflowId}: ${story.status}${story.result ? ` (${story.result.outcome})` : ''}`];
  if (p) {
    lines.push(`  ${p.instanceId}: ${p.source ?? '?'} -> ${p.destination}, phase ${p.phase}${p.stream ? ` (${p.stream})` : ''}, round ${p.round}`);
    if (p.disk && story.status === 'RUNNING') lines.push(`  disk ${p.disk.stream}: ${formatBytes(p.disk.bytesDone)}/${formatBytes(p.disk.bytesTotal)} at ${formatBytes(p.disk.rateBytesPerSec)}/s${p.disk.etaMs !== undefined ? `, ETA ${Math.ceil(p.disk.etaMs / 1000)} s` : ''}`);
    if (p.memory && story.status === 'RUNNING') {
      const m = p.memory;
      lines.push(`  memory (${m.status}): ${formatBytes(m.transferredBytes)} sent, ${formatBytes(m.remainingBytes)} left at ${formatBytes(m.rateBytesPerSec)}/s${m.iteration !== undefined ? `, iteration ${m.iteration}` : ''}${m.dirtyPagesRate !== undefined ? `, ${m.dirtyPagesRate} dirty pages/s` : ''}`);
    }
  }
  if (story.error) lines.push(`  reason: ${story.error}`);
  out(f.json, story, lines.join('\n'));
  return EXIT.ok;
}

export async function cancel(ctx: CliContext, id: string, f: { reason?: string; json?: boolean }): Promise<number> {
  const handle = await findMigration(ctx, id);
  try {
    const msg = await handle.executeUpdate(cancelUpdate, { args: [f.reason ?? 'cancelled by operator'] });
    out(f.json, { cancelled: true, message: msg }, msg);
    return EXIT.ok;
  } catch (err) {
    // By name too: under a TS loader the client's error classes can come from a second copy.
    if (err instanceof WorkflowUpdateFailedError || (err as Error).name === 'WorkflowUpdateFailedError') {
      const e = err as WorkflowUpdateFailedError;
      const reason = e.cause?.message ?? e.message;
      out(f.json, { cancelled: false, reason }, `refused: ${reason}`);
      return EXIT.refused;
    }
    // The migration may have closed while the request was on its way: say so, as a refusal.
    const d = await handle.describe().catch(() => undefined);
    if (!d) throw new CliError(`no migration ${id}`, EXIT.notFound);
    let reason: string | undefined;
    if (d.status.name !== 'RUNNING') reason = `nothing to cancel: migration ${d.workflowId} is already ${d.status.name.toLowerCase()}`;
    else {
      // The server may report a rejected update as an RPC error: the workflow's own state says why.
      const p = await handle.query(progressQuery).catch(() => undefined);
      if (p?.pastPointOfNoReturn) reason = `too late to cancel: ${p.instanceId} is past the point of no return (phase ${p.phase}); the migration can only finish`;
    }
    if (reason) {
      out(f.json, { cancelled: false, reason }, `refused: ${reason}`);
      return EXIT.refused;
    }
    throw err;
  }
}

export interface ListFilters {
  json?: boolean;
  limit?: string;
  instance?: string;
  node?: string;
  phase?: string;
  outcome?: string;
}

const OUTCOMES = ['migrated', 'rolled-back', 'failed'];

/** A visibility query from the filters; every value is checked first, so none can break out of its quotes. */
export function listQuery(f: ListFilters): string {
  const parts = [`WorkflowType = '${MIGRATE_WORKFLOW_TYPE}'`];
  const id = (flag: string, v: string) => {
    if (!ID_PATTERN.test(v)) throw new CliError(`--${flag}: invalid ${flag} ${JSON.stringify(v)}`, EXIT.usage);
    return v;
  };
  if (f.instance) parts.push(`FerryInstance = '${id('instance', f.instance)}'`);
  if (f.node) parts.push(`(FerrySource = '${id('node', f.node)}' OR FerryDestination = '${f.node}')`);
  if (f.phase) {
    const phases: string[] = [...PHASES, 'rolling-back', 'rolled-back', 'failed'];
    if (!phases.includes(f.phase)) throw new CliError(`--phase: one of ${phases.join(', ')}`, EXIT.usage);
    parts.push(`FerryPhase = '${f.phase}'`);
  }
  if (f.outcome) {
    if (!OUTCOMES.includes(f.outcome)) throw new CliError(`--outcome: one of ${OUTCOMES.join(', ')}`, EXIT.usage);
    parts.push(`FerryOutcome = '${f.outcome}'`);
  }
  return parts.join(' AND ');
}

export async function list(ctx: CliContext, f: ListFilters): Promise<number> {
  const limit = Number(f.limit ?? 50);
  if (!Number.isInteger(limit) || limit < 1) throw new CliError(`--limit: a whole number above 0`, EXIT.usage);
  const query = listQuery(f);
  const client = await ctx.client();
  const rows: Record<string, unknown>[] = [];
  for await (const w of client.workflow.list({ query })) {
    const sa = w.searchAttributes as Record<string, unknown[] | undefined>;
    let reason = (w.memo as { reason?: unknown } | undefined)?.reason as string | undefined;
    // A failed run from before the reason went into the memo: its failure says why.
    if (!reason && w.status.name === 'FAILED') {
      reason = await client.workflow.getHandle(w.workflowId, w.runId).result().then(
        () => undefined,
        (err: unknown) => failureMessage(err).message,
      );
    }
    rows.push({
      workflowId: w.workflowId,
      runId: w.runId,
      status: w.status.name,
      start: w.startTime.toISOString(),
      close: w.closeTime?.toISOString(),
      instance: sa.FerryInstance?.[0],
      phase: sa.FerryPhase?.[0],
      source: sa.FerrySource?.[0],
      destination: sa.FerryDestination?.[0],
      outcome: sa.FerryOutcome?.[0],
      reason,
    });
    if (rows.length >= limit) break;
  }
  const text = rows
    .map((r) => [r.workflowId, r.instance ?? '?', r.status, r.outcome ?? r.phase ?? '', `${r.source ?? '?'} -> ${r.destination ?? '?'}`, r.start, r.reason ? `reason: ${r.reason}` : ''].join('\t').trimEnd())
    .join('\n');
  out(f.json, rows, text || 'no migrations');
  return EXIT.ok;
}

export async function history(ctx: CliContext, id: string, f: { out?: string }): Promise<number> {
  const handle = await findMigration(ctx, id);
  // Serialized with the proto classes the client itself decoded it with (proto3 JSON field names,
  // enum names, 64-bit numbers as strings); `replay` reads it back with the same classes.
  const history = proto.temporal.api.history.v1.History.fromObject(await handle.fetchHistory());
  const json = JSON.stringify(proto.temporal.api.history.v1.History.toObject(history, { longs: String, enums: String, bytes: String }));
  if (f.out) {
    await writeFile(f.out, json);
    process.stderr.write(`history of ${handle.workflowId} written to ${f.out}\n`);
  } else process.stdout.write(`${json}\n`);
  return EXIT.ok;
}

/** Replays a recorded history against the current workflow code: fails on non-determinism. */
export async function replay(file: string): Promise<number> {
  const raw = JSON.parse(await readFile(file, 'utf8'));
  // Ferry's own export, else the Temporal CLI/UI JSON format.
  let history: unknown;
  try {
    history = proto.temporal.api.history.v1.History.fromObject(raw);
  } catch {
    history = historyFromJSON(raw);
  }
  await Worker.runReplayHistory({ workflowsPath: workflowsPath() }, history);
  process.stdout.write(`replayed ${file}: the workflow code is deterministic for this history\n`);
  return EXIT.ok;
}

function out(json: boolean | undefined, value: unknown, text: string) {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}
