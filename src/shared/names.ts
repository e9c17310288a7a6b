// Names shared by the client, the workers, the workflow and the tests. Keep this module free of
// Node built-ins: the workflow bundle imports it.

export const CONTROL_TASK_QUEUE = 'ferry-control';

/** Task queue of the node worker that runs on host `node`. */
export function taskQueueForNode(node: string): string {
  return `ferry-node-${node}`;
}

/** One instance never has two migrations at once: the workflow id is derived from it. */
export function migrationWorkflowId(instanceId: string): string {
  return `migrate-${instanceId}`;
}

export const MIGRATE_WORKFLOW_TYPE = 'migrateInstance';

/** The read-only check `ferry migrate` runs on the controller before it starts anything. */
export const CHECK_WORKFLOW_TYPE = 'checkMigration';

/** One sync of a node at a time. */
export function syncWorkflowId(node: string): string {
  return `sync-${node}`;
}

export const SYNC_WORKFLOW_TYPE = 'syncNode';

/** Identifiers accepted for instances and nodes: they end up in file names and QMP ids. */
export const ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/;

export const PHASES = [
  'validate',
  'reserve',
  'prepare',
  'track',
  'bulk-copy',
  'dirty-rounds',
  'memory',
  'final-sync',
  'resume',
  'commit',
  'cleanup',
  'done',
] as const;
export type Phase = (typeof PHASES)[number] | 'rolling-back' | 'rolled-back' | 'failed';
