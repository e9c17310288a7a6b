// The controller worker (queue `ferry-control`): runs the migration workflows and the inventory
// activities. One per cloud; the inventory file lives beside it.
import { Worker } from '@temporalio/worker';
import type { FerryConfig } from '../config/index.js';
import { createLogger } from '../config/index.js';
import { openInventory } from '../inventory/inventory.js';
import { createControlActivities } from '../activities/control.js';
import { CONTROL_TASK_QUEUE } from '../shared/names.js';
import { connectWorker } from './connection.js';
import { workflowsPath } from './workflows-path.js';

export async function createControllerWorker(cfg: FerryConfig) {
  const log = createLogger('controller');
  const inventory = openInventory(cfg.inventory.path);
  const connection = await connectWorker(cfg);
  const worker = await Worker.create({
    connection,
    namespace: cfg.temporal.namespace,
    taskQueue: CONTROL_TASK_QUEUE,
    workflowsPath: workflowsPath(),
    activities: createControlActivities({ inventory, log }),
  });
  return {
    worker,
    /** Runs until SIGINT/SIGTERM (the SDK's default shutdown signals), then drains and closes. */
    async run() {
      log.info({ taskQueue: CONTROL_TASK_QUEUE, inventory: cfg.inventory.path }, 'controller worker started');
      try {
        await worker.run();
      } finally {
        await connection.close();
        inventory.close();
        log.info('controller worker stopped');
      }
    },
  };
}
