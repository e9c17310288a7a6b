// How the migration workflow reaches its activities: the controller's queue, and each host's own
// queue with three retry behaviours (quick checks, long streams, roll-forward). Deterministic code.
import { proxyActivities } from '@temporalio/workflow';
import type { ControlActivities } from '../activities/control.js';
import type { NodeActivities } from '../activities/node.js';
import { CONTROL_TASK_QUEUE, taskQueueForNode } from '../shared/names.js';
import { NON_RETRYABLE } from '../shared/errors.js';

const retry = { nonRetryableErrorTypes: NON_RETRYABLE, maximumAttempts: 5, initialInterval: '1s' };

export const control = proxyActivities<ControlActivities>({
  taskQueue: CONTROL_TASK_QUEUE,
  startToCloseTimeout: '30s',
  retry,
});

export const controlForward = proxyActivities<ControlActivities>({
  taskQueue: CONTROL_TASK_QUEUE,
  startToCloseTimeout: '30s',
  retry: { maximumInterval: '30s' }, // no maximumAttempts: unlimited
});

/** Activities of one host, on that host's queue. Checks fail fast when no worker serves the node. */
export function nodeActivities(node: string) {
  const taskQueue = taskQueueForNode(node);
  return {
    quick: proxyActivities<NodeActivities>({
      taskQueue,
      scheduleToStartTimeout: '30s',
      startToCloseTimeout: '2m',
      retry,
    }),
    // Streams and memory pre-copy: long, heartbeating; a dead worker is noticed by the heartbeat
    // timeout and the retry resumes from the last acknowledged offset.
    long: proxyActivities<NodeActivities>({
      taskQueue,
      startToCloseTimeout: '12h',
      heartbeatTimeout: '20s',
      retry: { ...retry, maximumAttempts: 10 },
    }),
    // After the point of no return there is no undo: retry until the step succeeds.
    forward: proxyActivities<NodeActivities>({
      taskQueue,
      startToCloseTimeout: '30m',
      heartbeatTimeout: '30s',
      retry: { nonRetryableErrorTypes: [], maximumInterval: '30s' }, // no maximumAttempts: unlimited
    }),
  };
}
