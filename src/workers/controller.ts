// The controller worker (queue `ferry-control`): runs the migration workflows and the inventory
// activities. One per cloud; the inventory file lives beside it.
import { Worker } from '@temporalio/worker';
import type { FerryConfig } from '../config/index.js';
import { createLogger } from '../config/index.js';
import { openInventory } from '../inventory/inventory.js';
import { createControlActivities } from '../activities/control.js';
import { CONTROL_TASK_QUEUE } from '../shared/names.js';
import { connectWorker } from './connection.js';
import { installTemporalMetrics, startMetricsServer, type MetricsServer } from './metrics.js';
import { workflowsPath } from './workflows-path.js';

export async function createControllerWorker(cfg: FerryConfig) {
  const log = createLogger('controller');
  const inventory = openInventory(cfg.inventory.path);
  // Before the first NativeConnection: it would instantiate the SDK's Runtime without the exporter.
  const temporalMetricsUrl = cfg.metrics ? installTemporalMetrics(cfg.metrics.temporalAddress) : undefined;
  const connection = await connectWorker(cfg);
  const worker = await Worker.create({
    connection,
    namespace: cfg.temporal.namespace,
    taskQueue: CONTROL_TASK_QUEUE,
    workflowsPath: workflowsPath(),
    activities: createControlActivities({ inventory, log, defaults: cfg.defaults }),
  });
  return {
    worker,
    /** Runs until SIGINT/SIGTERM (the SDK's default shutdown signals), then drains and closes. */
    async run() {
      log.info({ taskQueue: CONTROL_TASK_QUEUE, inventory: cfg.inventory.path }, 'controller worker started');
      let metrics: MetricsServer | undefined;
      try {
        if (cfg.metrics) {
          metrics = await startMetricsServer({ address: cfg.metrics.address, temporalMetricsUrl });
          log.info({ url: metrics.url, temporal: temporalMetricsUrl }, 'metrics served');
        }
        await worker.run();
      } finally {
        await metrics?.close();
        await connection.close();
        inventory.close();
        log.info('controller worker stopped');
      }
    },
  };
}
