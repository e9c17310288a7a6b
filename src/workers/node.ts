// A node worker (queue `ferry-node-<name>`): runs on its host, owns that host's hypervisor and
// disks. It keeps no state that a restart loses: instances, bitmaps and receiver offsets live on
// the host.
import { Worker } from '@temporalio/worker';
import type { FerryConfig } from '../config/index.js';
import { createLogger } from '../config/index.js';
import { createNodeActivities } from '../activities/node.js';
import { createDriver } from '../drivers/index.js';
import { taskQueueForNode } from '../shared/names.js';
import { connectClient, connectWorker } from './connection.js';
import { installTemporalMetrics, startMetricsServer, type MetricsServer } from './metrics.js';

export async function createNodeWorker(cfg: FerryConfig) {
  const node = cfg.node;
  if (!node?.name) throw new Error('a node worker needs a node name: --node NAME, FERRY_NODE or node.name in the config');
  const log = createLogger(`node-${node.name}`);
  const driver = await createDriver(cfg);
  const client = await connectClient(cfg);
  // Before the first NativeConnection: it would instantiate the SDK's Runtime without the exporter.
  const temporalMetricsUrl = cfg.metrics ? installTemporalMetrics(cfg.metrics.temporalAddress) : undefined;
  const connection = await connectWorker(cfg);
  const taskQueue = taskQueueForNode(node.name);
  const worker = await Worker.create({
    connection,
    namespace: cfg.temporal.namespace,
    taskQueue,
    activities: createNodeActivities({
      nodeName: node.name,
      driver,
      dataAddress: node.dataAddress,
      stateDir: node.stateDir,
      client,
      log,
    }),
  });
  return {
    worker,
    async run() {
      log.info({ taskQueue, dataAddress: node.dataAddress, stateDir: node.stateDir }, 'node worker started');
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
        await client.connection.close();
        log.info('node worker stopped');
      }
    },
  };
}
