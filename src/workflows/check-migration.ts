// Phase 1's checks on the controller, with no side effect, as a workflow of their own: `ferry
// migrate` runs it before starting a migration, so a request the controller would refuse (an
// unknown instance, an option past its limit, a full destination) is refused before anything
// starts. Deterministic code only.
import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities, MigrationPlan, MigrationRequest } from '../activities/control.js';
import { CONTROL_TASK_QUEUE } from '../shared/names.js';
import { NON_RETRYABLE } from '../shared/errors.js';

const control = proxyActivities<ControlActivities>({
  taskQueue: CONTROL_TASK_QUEUE,
  startToCloseTimeout: '30s',
  retry: { nonRetryableErrorTypes: NON_RETRYABLE, maximumAttempts: 3, initialInterval: '1s' },
});

export async function checkMigration(input: MigrationRequest): Promise<MigrationPlan> {
  return control.checkMigration(input);
}
