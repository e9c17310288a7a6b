// `ferry node sync NODE`: asks the node's worker what its hypervisor runs, then records it in the
// inventory on the controller. Nothing on the host changes (at most a kernel module is loaded to
// learn whether era tracking is available).
//
// Deterministic code only: no Node built-ins, no I/O; activities are imported as types.
import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control.js';
import type { NodeActivities } from '../activities/node.js';
import { CONTROL_TASK_QUEUE, taskQueueForNode } from '../shared/names.js';
import { NON_RETRYABLE } from '../shared/errors.js';
import type { SyncNodeInput, SyncNodeResult } from '../shared/messages.js';

const retry = { nonRetryableErrorTypes: NON_RETRYABLE, maximumAttempts: 3, initialInterval: '1s' };

const control = proxyActivities<ControlActivities>({ taskQueue: CONTROL_TASK_QUEUE, startToCloseTimeout: '30s', retry });

export async function syncNode(input: SyncNodeInput): Promise<SyncNodeResult> {
  // An unknown node fails here, before waiting on a queue nobody serves.
  await control.requireNode({ node: input.node });
  const host = proxyActivities<NodeActivities>({
    taskQueue: taskQueueForNode(input.node),
    scheduleToStartTimeout: '30s',
    startToCloseTimeout: '4m',
    heartbeatTimeout: '30s',
    retry,
  });
  const found = await host.discoverInstances();
  const report = await control.importInstances({ node: input.node, instances: found.instances });
  return { ...report, refused: found.refused };
}
