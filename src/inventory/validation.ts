// Input schemas of the inventory API. Every write goes through one of these first: ids end up in
// file names, QMP ids and SQL, so hostile or malformed ones are refused before any statement runs.
import { z } from 'zod';
import { ID_PATTERN, PHASES } from '../shared/names.js';
import { HYPERVISOR_KINDS, VDEV_PATTERN } from '../shared/instance.js';
import { FerryError, ErrorTypes } from '../shared/errors.js';

/** Migration ids are wider than instance ids (a workflow id plus a run id), still file-name safe. */
export const MIGRATION_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export const idSchema = z
  .string()
  .regex(ID_PATTERN, 'must be 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit');
export const migrationIdSchema = z
  .string()
  .regex(MIGRATION_ID_PATTERN, 'must be 1-128 characters of A-Z, a-z, 0-9, ".", "_", ":" and "-"');

// host:port, [v6]:port, a unix path or an ssh target: any printable text without spaces.
const addressSchema = z
  .string()
  .min(1)
  .max(255)
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

const count = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
const positive = z.number().int().positive().max(Number.MAX_SAFE_INTEGER);

export const resourcesSchema = z.strictObject({ vcpus: count, memoryMiB: count, diskBytes: count });

export const nodeInputSchema = z.strictObject({
  name: idSchema,
  hypervisor: z.enum(HYPERVISOR_KINDS),
  controlAddress: addressSchema,
  dataAddress: addressSchema,
  state: z.enum(['up', 'down', 'drain']).default('up'),
  capacity: resourcesSchema,
  extra: z.record(z.string(), z.unknown()).default({}),
});
export type NodeInput = z.input<typeof nodeInputSchema>;

export const nodeStateSchema = z.enum(['up', 'down', 'drain']);
export const instanceStateSchema = z.enum(['running', 'migrating', 'stopped']);

const hostPath = z.string().min(1).max(4096).refine((p) => p.startsWith('/') && !/[\0\n]/.test(p), 'must be an absolute path without NUL or line breaks');

export const diskSpecSchema = z.strictObject({
  vdev: z.string().regex(VDEV_PATTERN, 'must be 2-16 characters of a-z and 0-9, starting with a letter'),
  kind: z.enum(['file', 'lv']),
  path: hostPath,
  format: z.enum(['raw', 'qcow2']),
  bytes: positive,
});

// Mirrors InstanceSpec of src/shared/instance.ts; unknown keys are kept for forward compatibility.
export const instanceSpecSchema = z.looseObject({
  id: idSchema,
  hypervisor: z.enum(HYPERVISOR_KINDS),
  vcpus: positive,
  memoryMiB: positive,
  disks: z
    .array(diskSpecSchema)
    .min(1, 'an instance needs at least one disk')
    .max(64)
    .refine((ds) => new Set(ds.map((d) => d.vdev)).size === ds.length, 'two disks share a vdev'),
  nics: z.array(z.strictObject({ mac: z.string().regex(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/, 'must be a lower-case MAC').optional(), bridge: z.string().max(15).optional() })).optional(),
  boot: z
    .strictObject({ kernel: z.string().min(1), initrd: z.string().optional(), append: z.string().optional() })
    .optional(),
  guestType: z.enum(['pv', 'pvh', 'hvm']).optional(),
  startedBy: z.enum(['ferry', 'xl create', 'libvirt']).optional(),
  servicePort: z.number().int().min(1).max(65535).optional(),
  extra: z.record(z.string(), z.unknown()).optional(),
});

export const instanceInputSchema = z.strictObject({
  spec: instanceSpecSchema,
  host: idSchema,
  state: instanceStateSchema.default('running'),
});

export const reserveInputSchema = z.strictObject({
  migrationId: migrationIdSchema,
  instanceId: idSchema,
  node: idSchema,
  vcpus: count,
  memoryMiB: count,
  diskBytes: count,
});
export type ReserveInput = z.input<typeof reserveInputSchema>;

export const commitInputSchema = z.strictObject({
  migrationId: migrationIdSchema,
  instanceId: idSchema,
  source: idSchema,
  destination: idSchema,
  /** The guest's disks as the destination holds them (their paths may differ from the source's). */
  disks: z.array(diskSpecSchema).min(1).max(64).optional(),
});
export type CommitInput = z.input<typeof commitInputSchema>;

export const beginInputSchema = commitInputSchema.omit({ disks: true });
export type BeginInput = z.input<typeof beginInputSchema>;

export const phaseSchema = z.enum([...PHASES, 'rolling-back', 'rolled-back', 'failed']);
export const outcomeSchema = z.enum(['succeeded', 'rolled-back', 'failed', 'cancelled']);

/** Parses `value` or throws FerryError BadInput naming the offending field. */
export function parseInput<S extends z.ZodType>(schema: S, value: unknown, what: string): z.output<S> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => {
    const where = i.path.length ? i.path.join('.') : what;
    return `${where}: ${i.message}`;
  });
  throw new FerryError(ErrorTypes.BadInput, `invalid ${what}: ${issues.join('; ')}`, { issues });
}
