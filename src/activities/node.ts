// Activities of a node worker: everything that touches this host's hypervisor and disks. Built by
// a factory so that workers and tests hand in the real parts of their choosing.
import { Context, heartbeat, activityInfo } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { randomBytes } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Handover, HypervisorDriver } from '../drivers/driver.js';
import { diskOf, type DiskSpec, type InstanceSpec } from '../shared/instance.js';
import { DiskReceiver } from '../dataplane/receiver.js';
import { sendStream } from '../dataplane/sender.js';
import { sha256OfSource } from '../dataplane/digest.js';
import { targetAsSource } from '../dataplane/disk-target.js';
import type { ReceiverEndpoint, TransferProgress } from '../dataplane/types.js';
import type { MigrationOptions } from '../shared/options.js';
import { progressSignal, type ProgressReport } from '../shared/messages.js';
import { recordDiskProgress, recordMemoryProgress, recordStreamStopped, streamKindLabel } from '../workers/metrics.js';
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
  /** The guest's disks as the destination holds them (the inventory records them at commit). */
  disks: DiskSpec[];
  /** One receiver per disk, by vdev. */
  endpoints: Record<string, ReceiverEndpoint>;
}

/** What the source's check tells the workflow about this host's hypervisor. */
export interface SourceFacts {
  handover: Handover;
}

/** Heartbeat details of a stream: disks before `disk` are done, `disk` is acknowledged up to `ackedOffset`. */
interface StreamCheckpoint {
  disk: number;
  ackedOffset: number;
}

export interface StreamResult extends TransferProgress {
  dirtyBytes: number;
}

export function createNodeActivities(deps: NodeActivityDeps) {
  const { driver, log } = deps;
  // Receivers live as long as this worker process; their acknowledged offsets are persisted, so a
  // restarted worker reopens one that resumes where the last one stopped.
  const receivers = new Map<string, { receivers: DiskReceiver[]; prepared: PreparedDestination }>();

  const receiverStateFile = (migrationId: string, vdev: string) => join(deps.stateDir, 'receivers', `${migrationId}.${vdev}.json`);

  async function closeReceivers(migrationId: string): Promise<void> {
    const open = receivers.get(migrationId);
    receivers.delete(migrationId);
    for (const r of open?.receivers ?? []) await r.close();
  }

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
    return (report: ProgressReport, force = false) => {
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
    async checkSource({ spec }: { spec: InstanceSpec }): Promise<SourceFacts> {
      return guarded('checkSource', async () => {
        const state = await driver.state(spec);
        if (state !== 'running') {
          throw new FerryError(ErrorTypes.InstanceNotRunning, `${spec.id} is ${state} on ${deps.nodeName}, not running: only a running instance can be live-migrated`);
        }
        await driver.checkMigratable(spec);
        return { handover: driver.handover };
      });
    },

    /** `ferry node sync`: what this host runs, as the hypervisor describes it. */
    async discoverInstances(): Promise<NonNullable<Awaited<ReturnType<NonNullable<HypervisorDriver['discover']>>>>> {
      return guarded('discoverInstances', async () => {
        if (!driver.discover) throw new FerryError(ErrorTypes.BadInput, `the ${driver.kind} driver of ${deps.nodeName} cannot list the guests it runs`);
        return withHeartbeat(() => driver.discover!());
      });
    },

    async checkDestination({ migrationId, spec }: { migrationId: string; spec: InstanceSpec }): Promise<void> {
      return guarded('checkDestination', async () => {
        const state = await driver.state(spec);
        if (state !== 'absent' && !receivers.has(migrationId)) {
          throw new FerryError(ErrorTypes.InvalidDestination, `${deps.nodeName} already holds an instance named ${spec.id} (${state}); remove it before migrating there`);
        }
        await driver.checkDestination(spec);
        await driver.checkMigratable(spec);
      });
    },

    /** Idempotent: called again after a destination worker restart, it reopens the receivers. */
    async prepareDestination({ migrationId, spec, tls }: { migrationId: string; spec: InstanceSpec; tls: boolean }): Promise<PreparedDestination> {
      return guarded('prepareDestination', async () => {
        const open = receivers.get(migrationId);
        if (open) return open.prepared;
        const { memoryUri } = await driver.prepareDestination(spec, { listenHost: deps.dataAddress });
        await mkdir(join(deps.stateDir, 'receivers'), { recursive: true });
        const disks = driver.destinationDisks(spec);
        const opened: DiskReceiver[] = [];
        try {
          for (const d of disks) {
            opened.push(
              await DiskReceiver.open({
                host: deps.dataAddress,
                port: 0,
                token: randomBytes(32).toString('hex'),
                diskPath: d.path,
                openDisk: () => driver.openDestinationDisk(spec, d.vdev),
                diskSize: d.bytes,
                tls,
                stateFile: receiverStateFile(migrationId, d.vdev),
              }),
            );
          }
        } catch (err) {
          for (const r of opened) await r.close().catch(() => undefined);
          throw err;
        }
        const prepared: PreparedDestination = {
          memoryUri,
          disks,
          endpoints: Object.fromEntries(disks.map((d, i) => [d.vdev, opened[i]!.endpoint()])),
        };
        receivers.set(migrationId, { receivers: opened, prepared });
        return prepared;
      });
    },

    async closeReceiver({ migrationId }: { migrationId: string }): Promise<void> {
      await closeReceivers(migrationId);
    },

    async abortDestination({ migrationId, spec }: { migrationId: string; spec: InstanceSpec }): Promise<void> {
      return guarded('abortDestination', async () => {
        await closeReceivers(migrationId);
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
     * Streams every disk whole (`bulk`) or one frozen dirty round of every disk to the destination's
     * receivers, one disk after the other. Resumes from the last acknowledged point: the previous
     * attempt's heartbeat details, or (larger, when the receiver outlived this worker) what the
     * receiver itself acknowledged.
     */
    async sendDisk(args: {
      migrationId: string;
      spec: InstanceSpec;
      endpoints: Record<string, ReceiverEndpoint>;
      streamId: string;
      round?: number;
      options: MigrationOptions;
    }): Promise<StreamResult> {
      return guarded('sendDisk', async () => {
        const { spec, streamId, options } = args;
        const ctx = Context.current();
        // Freezing a round can take a while (a trace drained, era metadata read): heartbeat meanwhile.
        const dirty = args.round === undefined ? undefined : await withHeartbeat(() => driver.takeDirtyRound(spec, args.round!), () => ctx.info.heartbeatDetails);
        const plans = spec.disks.map((d) => ({ disk: d, extents: dirty ? (dirty[d.vdev] ?? []) : [{ offset: 0, length: d.bytes }] }));
        const resume = ctx.info.heartbeatDetails as Partial<StreamCheckpoint> | undefined;
        const dirtyBytes = plans.reduce((n, p) => n + totalLength(p.extents), 0);
        const report = reporter(args.migrationId);
        const total: StreamResult = { streamId, ackedOffset: 0, doneBytes: 0, totalBytes: dirtyBytes, wireBytes: 0, zeroBytes: 0, elapsedMs: 0, dirtyBytes };
        const t0 = Date.now();
        for (const [i, { disk, extents }] of plans.entries()) {
          // Disks an earlier attempt finished count as done; the one it was on resumes at its offset.
          if (resume?.disk !== undefined && i < resume.disk) {
            total.doneBytes += totalLength(extents);
            continue;
          }
          const startOffset = resume?.disk === i ? (resume.ackedOffset ?? 0) : 0;
          const endpoint = args.endpoints[disk.vdev];
          if (!endpoint) throw new FerryError(ErrorTypes.BadInput, `no receiver for disk ${disk.vdev} of ${spec.id}`);
          if (extents.length === 0) continue;
          const before = { done: total.doneBytes, wire: total.wireBytes };
          // What this disk's stream has already counted in the metrics (progress reports are cumulative).
          let counted = { done: 0, wire: 0 };
          const source = await driver.openDisk(spec, disk.vdev);
          try {
            log.info({ streamId, vdev: disk.vdev, dirtyBytes: totalLength(extents), startOffset, remaining: totalLength(extentsFrom(extents, startOffset)) }, 'stream start');
            const r = await sendStream({
              endpoint,
              source,
              plan: { streamId: `${streamId}.${disk.vdev}`, extents, startOffset },
              options: { chunkSize: options.chunkSize, codec: options.codec, bandwidthBytesPerSec: options.bandwidthBytesPerSec },
              signal: ctx.cancellationSignal,
              onProgress: (p) => {
                ctx.heartbeat({ disk: i, ackedOffset: p.ackedOffset } satisfies StreamCheckpoint);
                const done = before.done + p.doneBytes;
                const elapsed = Date.now() - t0;
                recordDiskProgress(streamKindLabel(streamId), p.doneBytes - counted.done, p.wireBytes - counted.wire, elapsed > 0 ? (done / elapsed) * 1000 : 0);
                counted = { done: p.doneBytes, wire: p.wireBytes };
                report({ kind: 'disk', stream: streamId, bytesDone: done, bytesTotal: dirtyBytes, rateBytesPerSec: elapsed > 0 ? Math.round((done / elapsed) * 1000) : 0, wireBytes: before.wire + p.wireBytes });
              },
            });
            recordDiskProgress(streamKindLabel(streamId), r.doneBytes - counted.done, r.wireBytes - counted.wire, 0);
            total.doneBytes += r.doneBytes;
            total.wireBytes += r.wireBytes;
            total.zeroBytes += r.zeroBytes;
            log.info({ ...r, vdev: disk.vdev }, 'stream done');
          } finally {
            recordStreamStopped('disk');
            await source.close();
          }
          // The next disk starts from its beginning, also after a retry.
          ctx.heartbeat({ disk: i + 1, ackedOffset: 0 } satisfies StreamCheckpoint);
        }
        total.elapsedMs = Date.now() - t0;
        report({ kind: 'disk', stream: streamId, bytesDone: total.doneBytes, bytesTotal: dirtyBytes, rateBytesPerSec: total.elapsedMs > 0 ? Math.round((total.doneBytes / total.elapsedMs) * 1000) : 0, wireBytes: total.wireBytes }, true);
        return total;
      });
    },

    async migrateMemory({
      migrationId,
      spec,
      memoryUri,
      options,
      memoryDowntimeMs,
      destinationDisks,
    }: {
      migrationId: string;
      spec: InstanceSpec;
      memoryUri: string;
      options: MigrationOptions;
      memoryDowntimeMs: number;
      destinationDisks: DiskSpec[];
    }): Promise<void> {
      return guarded('migrateMemory', async () => {
        const report = reporter(migrationId);
        const ctx = Context.current();
        let last: unknown;
        // The rate over the last report, where the hypervisor gives none of its own.
        let prev: { at: number; bytes: number } | undefined;
        const abort = () => void driver.cancelMigration(spec).catch(() => undefined);
        ctx.cancellationSignal.addEventListener('abort', abort);
        try {
          await withHeartbeat(
            () =>
              driver.migrateMemory(spec, memoryUri, {
                downtimeMs: memoryDowntimeMs,
                destinationDisks,
                bandwidthBytesPerSec: options.bandwidthBytesPerSec || undefined,
                onProgress: (p) => {
                  last = p;
                  const now = Date.now();
                  const measured = prev && now > prev.at ? Math.round(((p.transferredBytes - prev.bytes) / (now - prev.at)) * 1000) : 0;
                  prev = { at: now, bytes: p.transferredBytes };
                  const rate = p.rateBytesPerSec ?? Math.max(0, measured);
                  recordMemoryProgress(p.transferredBytes, rate);
                  report({
                    kind: 'memory',
                    stream: 'memory',
                    status: p.status,
                    bytesDone: p.transferredBytes,
                    bytesTotal: p.totalBytes,
                    remainingBytes: p.remainingBytes,
                    rateBytesPerSec: rate,
                    wireBytes: p.transferredBytes,
                    dirtyPagesRate: p.dirtyPagesRate,
                    iteration: p.iteration,
                  });
                },
              }),
            () => last,
          );
        } finally {
          recordStreamStopped('memory');
          ctx.cancellationSignal.removeEventListener('abort', abort);
        }
      });
    },

    /** SHA-256 of every disk of one side, by vdev. */
    async digestDisks({ spec, side }: { spec: InstanceSpec; side: 'source' | 'destination' }): Promise<Record<string, string>> {
      return guarded('digestDisks', async () => {
        const out: Record<string, string> = {};
        for (const d of spec.disks) {
          if (driver.digestDisk) {
            out[d.vdev] = await withHeartbeat(() => driver.digestDisk!(spec, side, d.vdev));
            continue;
          }
          const source = side === 'source' ? await driver.openDisk(spec, d.vdev) : await openDestinationDisk(driver, spec, d.vdev);
          try {
            out[d.vdev] = await withHeartbeat(() => sha256OfSource(source));
          } finally {
            await source.close();
          }
        }
        return out;
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

    async retire({ spec, keepDisks }: { spec: InstanceSpec; keepDisks?: boolean }): Promise<void> {
      return guarded('retire', () => withHeartbeat(() => driver.retire(spec, { keepDisks })));
    },

    async instanceState({ spec }: { spec: InstanceSpec }) {
      return guarded('instanceState', () => driver.state(spec));
    },
  };
}

async function openDestinationDisk(driver: HypervisorDriver, spec: InstanceSpec, vdev: string) {
  return targetAsSource(await driver.openDestinationDisk(spec, vdev), diskOf(spec, vdev).bytes);
}

export type NodeActivities = ReturnType<typeof createNodeActivities>;
