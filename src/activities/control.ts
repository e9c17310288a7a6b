// Activities of the controller worker (queue `ferry-control`): the paper's CC. Only these write
// the inventory.
import type { Logger } from 'pino';
import type { Inventory, MigrationOutcome, SyncReport } from '../inventory/index.js';
import { totalDiskBytes, type DiskSpec, type InstanceSpec } from '../shared/instance.js';
import { FerryError, ErrorTypes, toFailure } from '../shared/errors.js';
import { ID_PATTERN } from '../shared/names.js';
import type { MigrationOptions, MigrationOptionsInput } from '../shared/options.js';
import { resolveOptions, type ParsedOptions } from '../shared/options-schema.js';
import { recordMigrationFinished } from '../workers/metrics.js';

export interface NodeRef {
  name: string;
  dataAddress: string;
}

export interface MigrationPlan {
  spec: InstanceSpec;
  source: NodeRef;
  destination: NodeRef;
  /** What the caller asked for over the config file's defaults over the built-in ones. */
  options: MigrationOptions;
}

export interface MigrationRequest {
  instanceId: string;
  destination: string;
  options?: MigrationOptionsInput;
}

export function createControlActivities(deps: { inventory: Inventory; log: Logger; /** The config file's `defaults:`. */ defaults?: ParsedOptions }) {
  const { inventory, log } = deps;

  /** Phase 1's checks, with no side effect: also what `ferry migrate` asks before it starts anything. */
  function plan(args: MigrationRequest): MigrationPlan {
    const { instanceId, destination } = args;
    if (typeof instanceId !== 'string' || !ID_PATTERN.test(instanceId)) throw new FerryError(ErrorTypes.BadInput, `invalid instance id ${JSON.stringify(instanceId)}: use lower-case letters, digits and dashes`);
    if (typeof destination !== 'string' || !ID_PATTERN.test(destination)) throw new FerryError(ErrorTypes.BadInput, `invalid node name ${JSON.stringify(destination)}: use lower-case letters, digits and dashes`);
    const options = resolveOptions(args.options, deps.defaults);
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
    return {
      spec,
      source: { name: src.name, dataAddress: src.dataAddress },
      destination: { name: dst.name, dataAddress: dst.dataAddress },
      options,
    };
  }

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
    async validateMigration(args: MigrationRequest & { migrationId: string }): Promise<MigrationPlan> {
      return guarded('validateMigration', () => {
        const p = plan(args);
        inventory.beginMigration({ migrationId: args.migrationId, instanceId: p.spec.id, source: p.source.name, destination: p.destination.name });
        inventory.logPhase(args.migrationId, 'validate', { instanceId: p.spec.id, source: p.source.name, destination: p.destination.name, options: p.options });
        return p;
      });
    },

    /** The same checks as validateMigration, with no side effect: `ferry migrate` runs it before starting. */
    async checkMigration(args: MigrationRequest): Promise<MigrationPlan> {
      return guarded('checkMigration', () => plan(args));
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
      return guarded('finishMigration', () => {
        // Counted once per migration: a retried finish (the first outcome stands) counts nothing again.
        const first = !inventory.getMigration(args.migrationId)?.outcome;
        inventory.finishMigration(args.migrationId, args.outcome, args.summary);
        if (first) {
          const summary = args.summary as { timeline?: { phase: string; at: number }[]; downtimeMs?: number } | undefined;
          recordMigrationFinished({ outcome: args.outcome, timeline: summary?.timeline ?? [], pauseMs: summary?.downtimeMs || undefined });
        }
      });
    },
  };
}

export type ControlActivities = ReturnType<typeof createControlActivities>;
