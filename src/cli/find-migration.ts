// Finds a migration however it was started: by the CLI (workflow id `migrate-<instance>`), from the
// Temporal UI (any workflow id), or by a script. The workflow sets FerryInstance from its first
// moment, so an instance id finds its runs through the search attributes.
import { WorkflowNotFoundError, type WorkflowHandle } from '@temporalio/client';
import { ID_PATTERN, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../shared/names.js';
import { CliError, EXIT, type CliContext } from './context.js';

/** Workflow ids as Temporal allows them, minus anything that could break out of a visibility query. */
const WORKFLOW_ID = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}$/;

/**
 * `id` is an instance id or a workflow id. For an instance: its running migration if there is one,
 * else its newest; the CLI's own id (`migrate-<id>`) is asked for directly too, since the
 * visibility store lags a new run by a moment.
 */
export async function findMigration(ctx: CliContext, id: string): Promise<WorkflowHandle> {
  // Checked before connecting: a bad id is a usage error whether or not Temporal answers.
  if (!WORKFLOW_ID.test(id)) throw new CliError(`invalid migration or instance id ${JSON.stringify(id)}`, EXIT.usage);
  const client = await ctx.client();
  const candidates: { workflowId: string; runId?: string; running: boolean; start: number }[] = [];
  const direct = async (workflowId: string) => {
    try {
      const d = await client.workflow.getHandle(workflowId).describe();
      if (d.type !== MIGRATE_WORKFLOW_TYPE) return;
      candidates.push({ workflowId, runId: d.runId, running: d.status.name === 'RUNNING', start: d.startTime.getTime() });
    } catch (err) {
      if (!(err instanceof WorkflowNotFoundError) && (err as Error).name !== 'WorkflowNotFoundError') throw err;
    }
  };
  if (!ID_PATTERN.test(id)) {
    // Not an instance id: a workflow id (a UI start's UUID, `migrate-...`).
    await direct(id);
  } else {
    await direct(migrationWorkflowId(id));
    const query = `WorkflowType = '${MIGRATE_WORKFLOW_TYPE}' AND FerryInstance = '${id}'`;
    let n = 0;
    for await (const w of client.workflow.list({ query })) {
      candidates.push({ workflowId: w.workflowId, runId: w.runId, running: w.status.name === 'RUNNING', start: w.startTime.getTime() });
      if (++n >= 20) break;
    }
    if (candidates.length === 0 && id.startsWith('migrate-')) await direct(id);
  }
  candidates.sort((a, b) => Number(b.running) - Number(a.running) || b.start - a.start);
  const best = candidates[0];
  if (!best) throw new CliError(`no migration ${id}: \`ferry list\` shows the known ones`, EXIT.notFound);
  return client.workflow.getHandle(best.workflowId, best.runId);
}

/** The message of a failed run's failure, innermost cause first (an activity's own words). */
export function failureMessage(err: unknown): { message: string; type?: string } {
  const e = err as { message?: string; cause?: { message?: string; type?: string; cause?: { message?: string; type?: string } } };
  const inner = e.cause?.cause ?? e.cause;
  return { message: inner?.message ?? e.message ?? String(err), type: inner?.type };
}
