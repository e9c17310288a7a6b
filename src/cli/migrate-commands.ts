// `ferry migrate`, `status`, `cancel`, `list`, `history`, `replay`: the commands that talk to
// Temporal about migrations.
import { readFile, writeFile } from 'node:fs/promises';
import { WorkflowExecutionAlreadyStartedError, WorkflowFailedError, WorkflowNotFoundError, WorkflowUpdateFailedError, type WorkflowHandle } from '@temporalio/client';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils.js';
import proto from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { CONTROL_TASK_QUEUE, ID_PATTERN, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../shared/names.js';
import { cancelUpdate, progressQuery, type MigrateInput, type MigrationProgress, type MigrationResult } from '../shared/messages.js';
import { SA_DESTINATION, SA_INSTANCE } from '../shared/search-attributes.js';
import type { MigrationOptions } from '../shared/options.js';
import { parseBandwidth, parseDuration, parseSize } from '../config/index.js';
import { workflowsPath } from '../workers/workflows-path.js';
import { CliError, EXIT, type CliContext } from './context.js';
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

/** Options given on the command line, over the config's defaults; the workflow adds the rest. */
export function migrationOptions(ctx: CliContext, f: MigrateFlags): Partial<MigrationOptions> {
  const d = ctx.config().defaults;
  const o: Partial<MigrationOptions> = {
    codec: (f.codec ?? d.codec) as MigrationOptions['codec'],
    chunkSize: f.chunkSize ? parseSize(f.chunkSize) : d.chunkSizeBytes,
    bandwidthBytesPerSec: f.bandwidth ? parseBandwidth(f.bandwidth) : d.bandwidthBytesPerSec,
    downtimeMs: f.downtime ? parseDuration(f.downtime) : d.downtimeMs,
    maxRounds: f.maxRounds ? Number(f.maxRounds) : d.maxRounds,
  };
  if (f.tls === false) o.tls = false;
  if (f.verify) o.verifyDisk = true;
  if (f.keepSource) o.keepSourceDisks = true;
  return o;
}

export function resolveWorkflowId(id: string): string {
  if (id.startsWith('migrate-')) return id;
  if (!ID_PATTERN.test(id)) throw new CliError(`invalid instance id ${JSON.stringify(id)}`, EXIT.usage);
  return migrationWorkflowId(id);
}

export async function migrate(ctx: CliContext, instanceId: string, f: MigrateFlags): Promise<number> {
  if (!ID_PATTERN.test(instanceId)) throw new CliError(`invalid instance id ${JSON.stringify(instanceId)}: use lower-case letters, digits and dashes`, EXIT.usage);
  if (!ID_PATTERN.test(f.to)) throw new CliError(`invalid node name ${JSON.stringify(f.to)}`, EXIT.usage);
  const client = await ctx.client();
  const input: MigrateInput = { instanceId, destination: f.to, options: migrationOptions(ctx, f) };
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
      const cause = err.cause as { message?: string; type?: string; cause?: { message?: string; type?: string } } | undefined;
      const inner = cause?.cause ?? cause;
      const message = inner?.message ?? err.message;
      out(json, { outcome: 'failed', error: message, type: inner?.type }, `failed: ${message}`);
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

export async function status(ctx: CliContext, id: string, f: { json?: boolean }): Promise<number> {
  const client = await ctx.client();
  const handle = client.workflow.getHandle(resolveWorkflowId(id));
  try {
    const d = await handle.describe();
    let progress: MigrationProgress | undefined;
    // A query needs a controller worker to answer; right after a workflow closes it may briefly
    // not. Without an answer, the status alone is still useful.
    for (let attempt = 0; attempt < 3 && !progress; attempt++) {
      try {
        progress = await handle.query(progressQuery);
      } catch {
        await new Promise((r) => setTimeout(r, 1000));
      }
    }
    // A finished migration also has its report.
    const result = d.status.name === 'COMPLETED' ? ((await handle.result().catch(() => undefined)) as MigrationResult | undefined) : undefined;
    const view = { workflowId: d.workflowId, runId: d.runId, status: d.status.name, startTime: d.startTime, closeTime: d.closeTime, progress, result };
    out(f.json, view, [`${d.workflowId}: ${d.status.name}`, progress ? `  phase ${progress.phase}${progress.stream ? ` (${progress.stream})` : ''}, ${formatBytes(progress.bytesDone)}/${formatBytes(progress.bytesTotal)}, round ${progress.round}` : ''].filter(Boolean).join('\n'));
    return EXIT.ok;
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) throw new CliError(`no migration ${id}`, EXIT.notFound);
    throw err;
  }
}

export async function cancel(ctx: CliContext, id: string, f: { reason?: string; json?: boolean }): Promise<number> {
  const client = await ctx.client();
  const handle = client.workflow.getHandle(resolveWorkflowId(id));
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

export async function list(ctx: CliContext, f: { json?: boolean; limit?: string }): Promise<number> {
  const client = await ctx.client();
  const rows: Record<string, unknown>[] = [];
  const limit = Number(f.limit ?? 50);
  for await (const w of client.workflow.list({ query: `WorkflowType = '${MIGRATE_WORKFLOW_TYPE}'` })) {
    const sa = w.searchAttributes as Record<string, unknown[] | undefined>;
    rows.push({
      workflowId: w.workflowId,
      status: w.status.name,
      start: w.startTime.toISOString(),
      close: w.closeTime?.toISOString(),
      phase: sa.FerryPhase?.[0],
      source: sa.FerrySource?.[0],
      destination: sa.FerryDestination?.[0],
      outcome: sa.FerryOutcome?.[0],
    });
    if (rows.length >= limit) break;
  }
  out(f.json, rows, rows.map((r) => `${r.workflowId}\t${r.status}\t${r.phase ?? ''}\t${r.source ?? '?'} -> ${r.destination ?? '?'}\t${r.start}`).join('\n') || 'no migrations');
  return EXIT.ok;
}

export async function history(ctx: CliContext, id: string, f: { out?: string }): Promise<number> {
  const client = await ctx.client();
  const handle = client.workflow.getHandle(resolveWorkflowId(id));
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
