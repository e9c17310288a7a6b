// Activities of the controller worker (queue `ferry-control`): the paper's CC. Only these write
// the inventory.
import type { Logger } from 'pino';
import type { Inventory, MigrationOutcome, SyncReport } from '../inventory/index.js';
import { totalDiskBytes, type DiskSpec, type InstanceSpec } from '../shared/instance.js';
import { FerryError, ErrorTypes, toFailure } from '../shared/errors.js';
import { ID_PATTERN } from '../shared/names.js';
import { MAX_DOWNTIME_MS, type MigrationOptions } from '../shared/options.js';
import { CODECS } from '../dataplane/types.js';

export interface NodeRef {
  name: string;
  dataAddress: string;
}

export interface MigrationPlan {
  spec: InstanceSpec;
  source: NodeRef;
  destination: NodeRef;
}

export function createControlActivities(deps: { inventory: Inventory; log: Logger }) {
  const { inventory, log } = deps;

  function guarded<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      log.error({ err, what }, 'activity failed');
      throw toFailure(err);
    }
  }

  return {
    /** Phase 1: everything is checked before any side effect; failures are non-retryable. */
    async validateMigration(args: { migrationId: string; instanceId: string; destination: string; options: MigrationOptions }): Promise<MigrationPlan> {
      return guarded('validateMigration', () => {
        const { instanceId, destination, options } = args;
        if (!ID_PATTERN.test(instanceId)) throw new FerryError(ErrorTypes.BadInput, `invalid instance id ${JSON.stringify(instanceId)}: use lower-case letters, digits and dashes`);
        if (!ID_PATTERN.test(destination)) throw new FerryError(ErrorTypes.BadInput, `invalid node name ${JSON.stringify(destination)}: use lower-case letters, digits and dashes`);
        validateOptions(options);
        const instance = inventory.findInstance(instanceId);
        if (!instance) throw new FerryError(ErrorTypes.UnknownInstance, `unknown instance ${instanceId}: \`ferry instance list\` shows the known ones`);
        if (instance.state !== 'running') throw new FerryError(ErrorTypes.InstanceNotRunning, `${instanceId} is ${instance.state}, not running`);
        const src = inventory.findNode(instance.host);
        if (!src) throw new FerryError(ErrorTypes.UnknownNode, `${instanceId} is on ${instance.host}, which the inventory does not know`);
        const dst = inventory.findNode(destination);
        if (!dst) throw new FerryError(ErrorTypes.UnknownNode, `unknown node ${destination}: \`ferry node list\` shows the known ones`);
        if (dst.name === src.name) throw new FerryError(ErrorTypes.InvalidDestination, `${instanceId} already runs on ${dst.name}: pick another destination`);
        if (dst.state !== 'up') throw new FerryError(ErrorTypes.InvalidDestination, `node ${dst.name} is ${dst.state}, not up`);
        if (dst.hypervisor !== src.hypervisor) {
          throw new FerryError(ErrorTypes.HypervisorMismatch, `${src.name} runs ${src.hypervisor} and ${dst.name} runs ${dst.hypervisor}: live migration needs the same hypervisor on both`);
        }
        const free = inventory.freeCapacity(dst.name);
        const spec = instance.spec;
        const short = [
          free.vcpus < spec.vcpus ? `${spec.vcpus} vCPU (free ${free.vcpus})` : '',
          free.memoryMiB < spec.memoryMiB ? `${spec.memoryMiB} MiB memory (free ${free.memoryMiB})` : '',
          free.diskBytes < totalDiskBytes(spec) ? `${totalDiskBytes(spec)} bytes of disk (free ${free.diskBytes})` : '',
        ].filter(Boolean);
        if (short.length) throw new FerryError(ErrorTypes.DestinationFull, `${dst.name} cannot take ${instanceId}: it needs ${short.join(', ')}`);
        inventory.beginMigration({ migrationId: args.migrationId, instanceId, source: src.name, destination: dst.name });
        inventory.logPhase(args.migrationId, 'validate', { instanceId, source: src.name, destination: dst.name });
        return {
          spec,
          source: { name: src.name, dataAddress: src.dataAddress },
          destination: { name: dst.name, dataAddress: dst.dataAddress },
        };
      });
    },

    async reserveCapacity(args: { migrationId: string; instanceId: string; node: string }): Promise<void> {
      return guarded('reserveCapacity', () => {
        const instance = inventory.findInstance(args.instanceId);
        if (!instance) throw new FerryError(ErrorTypes.UnknownInstance, `unknown instance ${args.instanceId}`);
        inventory.reserve({
          migrationId: args.migrationId,
          instanceId: args.instanceId,
          node: args.node,
          vcpus: instance.spec.vcpus,
          memoryMiB: instance.spec.memoryMiB,
          diskBytes: instance.diskBytes,
        });
        inventory.logPhase(args.migrationId, 'reserve', { node: args.node });
      });
    },

    async releaseReservation(args: { migrationId: string }): Promise<void> {
      return guarded('releaseReservation', () => void inventory.release(args.migrationId));
    },

    async commitMigration(args: { migrationId: string; instanceId: string; source: string; destination: string; disks?: DiskSpec[] }): Promise<void> {
      return guarded('commitMigration', () => void inventory.commitMigration(args));
    },

    async requireNode(args: { node: string }): Promise<void> {
      return guarded('requireNode', () => {
        if (!ID_PATTERN.test(args.node)) throw new FerryError(ErrorTypes.BadInput, `invalid node name ${JSON.stringify(args.node)}: use lower-case letters, digits and dashes`);
        if (!inventory.findNode(args.node)) throw new FerryError(ErrorTypes.UnknownNode, `unknown node ${args.node}: \`ferry node add\` registers it, \`ferry node list\` shows the known ones`);
      });
    },

    /** `ferry node sync`: records what a node's hypervisor says it runs (see Inventory.syncInstances). */
    async importInstances(args: { node: string; instances: InstanceSpec[] }): Promise<SyncReport> {
      return guarded('importInstances', () => inventory.syncInstances(args.node, args.instances));
    },

    async finishMigration(args: { migrationId: string; outcome: MigrationOutcome; summary: unknown }): Promise<void> {
      return guarded('finishMigration', () => void inventory.finishMigration(args.migrationId, args.outcome, args.summary));
    },
  };
}

function validateOptions(o: MigrationOptions): void {
  const bad = (msg: string) => {
    throw new FerryError(ErrorTypes.BadInput, msg);
  };
  if (!CODECS.includes(o.codec)) bad(`unknown codec ${JSON.stringify(o.codec)}: use one of ${CODECS.join(', ')}`);
  if (!Number.isInteger(o.chunkSize) || o.chunkSize < 4096 || o.chunkSize > 64 * 1024 * 1024 || o.chunkSize % 512 !== 0) {
    bad(`chunk size ${o.chunkSize} must be a multiple of 512 between 4 KiB and 64 MiB`);
  }
  if (!(o.downtimeMs > 0 && o.downtimeMs <= MAX_DOWNTIME_MS)) bad(`downtime budget ${o.downtimeMs} ms must be above 0 and at most ${MAX_DOWNTIME_MS} ms`);
  if (!Number.isInteger(o.maxRounds) || o.maxRounds < 1 || o.maxRounds > 64) bad(`max rounds ${o.maxRounds} must be between 1 and 64`);
  if (!(o.bandwidthBytesPerSec >= 0)) bad(`bandwidth cap must be 0 (unlimited) or positive`);
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
