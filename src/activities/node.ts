// Activities of a node worker: everything that touches this host's hypervisor and disks. Built by
// a factory so that workers and tests hand in the real parts of their choosing.
import { Context, heartbeat, activityInfo } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Logger } from 'pino';
import type { HypervisorDriver, InstanceSpec } from '../drivers/driver.js';
import { DiskReceiver } from '../dataplane/receiver.js';
import { sendStream } from '../dataplane/sender.js';
import { sha256OfSource } from '../dataplane/digest.js';
import { targetAsSource } from '../dataplane/disk-target.js';
import type { ReceiverEndpoint, TransferProgress } from '../dataplane/types.js';
import type { MigrationOptions } from '../shared/options.js';
import { progressSignal } from '../shared/messages.js';
import { FerryError, ErrorTypes, toFailure } from '../shared/errors.js';
import { extentsFrom, totalLength, type Extent } from '../shared/extents.js';

export interface NodeActivityDeps {
  nodeName: string;
  driver: HypervisorDriver;
  /** Address on the migration network where receivers and incoming memory listen. */
  dataAddress: string;
  /** Receiver state files (acknowledged offsets) live here. */
  stateDir: string;
  /** Used to report progress to the workflow; optional in tests. */
  client?: Client;
  log: Logger;
}

export interface PreparedDestination {
  memoryUri: string;
  /** Where the instance's disk lives on the destination (the inventory records it at commit). */
  diskPath: string;
  endpoint: ReceiverEndpoint;
}

export interface StreamResult extends TransferProgress {
  dirtyBytes: number;
}

export function createNodeActivities(deps: NodeActivityDeps) {
  const { driver, log } = deps;
  // Receivers live as long as this worker process; their acknowledged offsets are persisted, so a
  // restarted worker reopens one that resumes where the last one stopped.
  const receivers = new Map<string, { receiver: DiskReceiver; endpoint: ReceiverEndpoint; memoryUri: string }>();

  const receiverStateFile = (migrationId: string) => join(deps.stateDir, 'receivers', `${migrationId}.json`);

  async function guarded<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      log.error({ err, what }, 'activity failed');
      throw toFailure(err);
    }
  }

  /** Heartbeats on a timer while `fn` runs, for driver calls that report no progress of their own. */
  async function withHeartbeat<T>(fn: () => Promise<T>, details?: () => unknown): Promise<T> {
    const timer = setInterval(() => heartbeat(details?.()), 2000);
    try {
      return await fn();
    } finally {
      clearInterval(timer);
    }
  }

  function reporter(migrationId: string) {
    let last = 0;
    return (report: { stream: string; bytesDone: number; bytesTotal: number; rateBytesPerSec: number; wireBytes: number }, force = false) => {
      const now = Date.now();
      if (!deps.client || (!force && now - last < 2000)) return;
      last = now;
      const info = activityInfo();
      // Progress is advisory: a failed signal must never fail the transfer.
      deps.client.workflow
        .getHandle(info.workflowExecution!.workflowId, info.workflowExecution!.runId)
        .signal(progressSignal, report)
        .catch((err) => log.debug({ err, migrationId }, 'progress signal failed'));
    };
  }

  return {
    async checkSource({ spec }: { spec: InstanceSpec }): Promise<void> {
      return guarded('checkSource', async () => {
        const state = await driver.state(spec);
        if (state !== 'running') {
          throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is ${state} on ${deps.nodeName}, not running: only a running instance can be live-migrated`);
        }
        await driver.checkMigratable(spec);
      });
    },

    async checkDestination({ migrationId, spec }: { migrationId: string; spec: InstanceSpec }): Promise<void> {
      return guarded('checkDestination', async () => {
        const state = await driver.state(spec);
        if (state !== 'absent' && !receivers.has(migrationId)) {
          throw new FerryError(ErrorTypes.InvalidDestination, `${deps.nodeName} already holds an instance named ${spec.id} (${state}); remove it before migrating there`);
        }
        const free = await driver.destinationFreeBytes(spec);
        if (free < spec.diskBytes) {
          const diskDir = dirname(driver.destinationDiskPath(spec));
          throw new FerryError(ErrorTypes.DestinationDiskFull, `${deps.nodeName} has ${free} bytes free in ${diskDir}, the disk of ${spec.id} needs ${spec.diskBytes}`);
        }
        await driver.checkMigratable(spec);
      });
    },

    /** Idempotent: called again after a destination worker restart, it reopens the receiver. */
    async prepareDestination({ migrationId, spec, tls }: { migrationId: string; spec: InstanceSpec; tls: boolean }): Promise<PreparedDestination> {
      return guarded('prepareDestination', async () => {
        let open = receivers.get(migrationId);
        if (!open) {
          const { memoryUri } = await driver.prepareDestination(spec, { listenHost: deps.dataAddress });
          await mkdir(join(deps.stateDir, 'receivers'), { recursive: true });
          const receiver = await DiskReceiver.open({
            host: deps.dataAddress,
            port: 0,
            token: randomBytes(32).toString('hex'),
            diskPath: driver.destinationDiskPath(spec),
            openDisk: () => driver.openDestinationDisk(spec),
            diskSize: spec.diskBytes,
            tls,
            stateFile: receiverStateFile(migrationId),
          });
          open = { receiver, endpoint: receiver.endpoint(), memoryUri };
          receivers.set(migrationId, open);
        }
        return { memoryUri: open.memoryUri, diskPath: driver.destinationDiskPath(spec), endpoint: open.endpoint };
      });
    },

    async closeReceiver({ migrationId }: { migrationId: string }): Promise<void> {
      const open = receivers.get(migrationId);
      receivers.delete(migrationId);
      await open?.receiver.close();
    },

    async abortDestination({ migrationId, spec }: { migrationId: string; spec: InstanceSpec }): Promise<void> {
      return guarded('abortDestination', async () => {
        const open = receivers.get(migrationId);
        receivers.delete(migrationId);
        await open?.receiver.close();
        await driver.abortDestination(spec);
      });
    },

    async startDirtyTracking({ spec }: { spec: InstanceSpec }): Promise<void> {
      return guarded('startDirtyTracking', () => driver.startDirtyTracking(spec));
    },

    async stopDirtyTracking({ spec }: { spec: InstanceSpec }): Promise<void> {
      return guarded('stopDirtyTracking', () => driver.stopDirtyTracking(spec));
    },

    /**
     * Streams the whole disk (`bulk`) or one frozen dirty round to the destination's receiver.
     * Resumes from the last acknowledged offset: the previous attempt's heartbeat details, or
     * (larger, when the receiver outlived this worker) what the receiver itself acknowledged.
     */
    async sendDisk(args: {
      migrationId: string;
      spec: InstanceSpec;
      endpoint: ReceiverEndpoint;
      streamId: string;
      round?: number;
      options: MigrationOptions;
    }): Promise<StreamResult> {
      return guarded('sendDisk', async () => {
        const { spec, streamId, options } = args;
        const ctx = Context.current();
        const extents: Extent[] =
          args.round === undefined ? [{ offset: 0, length: spec.diskBytes }] : await driver.takeDirtyRound(spec, args.round);
        const startOffset = (ctx.info.heartbeatDetails as { ackedOffset?: number } | undefined)?.ackedOffset ?? 0;
        const dirtyBytes = totalLength(extents);
        const report = reporter(args.migrationId);
        const source = await driver.openDisk(spec);
        try {
          log.info({ streamId, dirtyBytes, startOffset, remaining: totalLength(extentsFrom(extents, startOffset)) }, 'stream start');
          const result = await sendStream({
            endpoint: args.endpoint,
            source,
            plan: { streamId, extents, startOffset },
            options: { chunkSize: options.chunkSize, codec: options.codec, bandwidthBytesPerSec: options.bandwidthBytesPerSec },
            signal: ctx.cancellationSignal,
            onProgress: (p) => {
              ctx.heartbeat({ ackedOffset: p.ackedOffset });
              report({
                stream: streamId,
                bytesDone: p.doneBytes,
                bytesTotal: p.totalBytes,
                rateBytesPerSec: p.elapsedMs > 0 ? Math.round((p.doneBytes / p.elapsedMs) * 1000) : 0,
                wireBytes: p.wireBytes,
              });
            },
          });
          report({ stream: streamId, bytesDone: result.doneBytes, bytesTotal: result.totalBytes, rateBytesPerSec: result.elapsedMs > 0 ? Math.round((result.doneBytes / result.elapsedMs) * 1000) : 0, wireBytes: result.wireBytes }, true);
          log.info({ ...result }, 'stream done');
          return { ...result, dirtyBytes };
        } finally {
          await source.close();
        }
      });
    },

    async migrateMemory({ migrationId, spec, memoryUri, options, memoryDowntimeMs }: { migrationId: string; spec: InstanceSpec; memoryUri: string; options: MigrationOptions; memoryDowntimeMs: number }): Promise<void> {
      return guarded('migrateMemory', async () => {
        const report = reporter(migrationId);
        const ctx = Context.current();
        let last: unknown;
        const abort = () => void driver.cancelMigration(spec).catch(() => undefined);
        ctx.cancellationSignal.addEventListener('abort', abort);
        try {
          await withHeartbeat(
            () =>
              driver.migrateMemory(spec, memoryUri, {
                downtimeMs: memoryDowntimeMs,
                bandwidthBytesPerSec: options.bandwidthBytesPerSec || undefined,
                onProgress: (p) => {
                  last = p;
                  report({ stream: 'memory', bytesDone: p.transferredBytes, bytesTotal: p.totalBytes, rateBytesPerSec: 0, wireBytes: p.transferredBytes });
                },
              }),
            () => last,
          );
        } finally {
          ctx.cancellationSignal.removeEventListener('abort', abort);
        }
      });
    },

    async digestDisk({ spec, side }: { spec: InstanceSpec; side: 'source' | 'destination' }): Promise<string> {
      return guarded('digestDisk', async () => {
        if (driver.digestDisk) return withHeartbeat(() => driver.digestDisk!(spec, side));
        const source = side === 'source' ? await driver.openDisk(spec) : await openDestinationDisk(driver, spec);
        try {
          return await withHeartbeat(() => sha256OfSource(source));
        } finally {
          await source.close();
        }
      });
    },

    /** The point of no return (called once the final sync is done). */
    async switchover({ spec }: { spec: InstanceSpec }) {
      return guarded('switchover', () => withHeartbeat(() => driver.switchover(spec)));
    },

    async resume({ spec }: { migrationId: string; spec: InstanceSpec }): Promise<void> {
      return guarded('resume', () => driver.resume(spec));
    },

    async cancelMigration({ spec }: { spec: InstanceSpec }): Promise<void> {
      return guarded('cancelMigration', () => driver.cancelMigration(spec));
    },

    async retire({ spec }: { spec: InstanceSpec }): Promise<void> {
      return guarded('retire', () => withHeartbeat(() => driver.retire(spec)));
    },

    async instanceState({ spec }: { spec: InstanceSpec }) {
      return guarded('instanceState', () => driver.state(spec));
    },
  };
}

async function openDestinationDisk(driver: HypervisorDriver, spec: InstanceSpec) {
  return targetAsSource(await driver.openDestinationDisk(spec), spec.diskBytes);
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
