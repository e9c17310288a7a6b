// The shape of ferry.yaml, with defaults, limits and unit parsing. Unknown keys are refused so a
// typo ("adress") is an error instead of a silently ignored setting.
import { z } from 'zod';
import { CODECS } from '../dataplane/types.js';
import { ID_PATTERN } from '../shared/names.js';
import { parseBandwidth, parseDuration, parseSize } from './units.js';

/** The paper's dead zone was 20-24 s; Ferry never lets the guest stay paused that long. */
export const MAX_DOWNTIME_MS = 20_000;

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A string-or-number field run through one of the unit parsers; its error becomes the issue. */
function unit(parse: (v: string | number) => number) {
  return z.union([z.string(), z.number()]).transform((v, ctx) => {
    try {
      return parse(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

const pathString = z.string().min(1).refine((p) => !p.includes('\0'), 'must not contain NUL');
const address = z
  .string()
  .min(1)
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

const tlsSchema = z
  .strictObject({
    serverName: z.string().min(1).optional(),
    caFile: pathString.optional(),
    certFile: pathString.optional(),
    keyFile: pathString.optional(),
  })
  .refine((t) => (t.certFile === undefined) === (t.keyFile === undefined), {
    message: 'certFile and keyFile go together: set both or neither',
  });

const temporalSchema = z.strictObject({
  address: address.default('127.0.0.1:7233'),
  namespace: z.string().min(1).max(255).default('default'),
  tls: tlsSchema.optional(),
});

const inventorySchema = z.strictObject({
  path: pathString.default('/var/lib/ferry/inventory.db'),
});

// A Xen node's worker drives its dom0 through `xl` and `dmsetup`: locally when the worker runs in
// dom0, over SSH (host key pinned in a known_hosts file) when it runs elsewhere.
const xenSchema = z.strictObject({
  /** Per-instance state and destination disks, on the Xen host. */
  stateDir: pathString.refine((p) => p.startsWith('/'), 'must be absolute').default('/var/lib/ferry/xen'),
  /** dom0's address on the migration network (what the peer's `xl migrate` connects to). */
  migrationAddress: address.optional(),
  /** `xl migrate -s` transport as an argv; default plain ssh. */
  migrateSshCommand: z.array(z.string().min(1).refine((w) => !w.includes('\0'), 'must not contain NUL')).min(1).optional(),
  /** Volume group for incoming guests' LV disks; default: the VG name the disk has on its source. */
  volumeGroup: z.string().regex(/^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}$/, 'must be an LVM volume group name').optional(),
  /** Where incoming guests' file disks go: prefix rewrites, first match wins; default: the same path. */
  pathMap: z
    .array(z.strictObject({ from: pathString.refine((p) => p.startsWith('/'), 'must be absolute'), to: pathString.refine((p) => p.startsWith('/'), 'must be absolute') }))
    .optional(),
  ssh: z
    .strictObject({
      host: address,
      port: z.number().int().min(1).max(65535).default(22),
      user: z.string().regex(/^[a-z_][a-z0-9_-]{0,31}$/, 'must be a user name').default('root'),
      keyFile: pathString,
      knownHostsFile: pathString,
    })
    .optional(),
});

// Only node workers have this section; `loadConfig({ nodeName })` lets `--node NAME` fill in
// the name before validation, so the output is always complete.
const nodeSchema = z
  .strictObject({
    name: z.string().regex(ID_PATTERN, 'must be 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit'),
    hypervisor: z.enum(['qemu', 'xen']).optional(),
    dataAddress: address,
    stateDir: pathString.optional(),
    xen: xenSchema.optional(),
  })
  .transform((n) => ({ ...n, stateDir: n.stateDir ?? `/var/lib/ferry/nodes/${n.name}` }));

const defaultsSchema = z.strictObject({
  codec: z.enum(CODECS as readonly ['lzo', 'none']).default('lzo'),
  chunkSize: unit(parseSize)
    .prefault('1MiB')
    .refine((n) => n >= 4096 && n <= 64 * 2 ** 20 && n % 4096 === 0, 'must be a multiple of 4KiB between 4KiB and 64MiB'),
  bandwidth: unit(parseBandwidth).prefault(0),
  downtime: unit(parseDuration)
    .prefault('2s')
    .refine((n) => n > 0, 'must be more than 0')
    .refine((n) => n <= MAX_DOWNTIME_MS, 'must be at most 20s (the guest never stays paused longer)'),
  maxRounds: z.number().int().min(1).max(1000).default(8),
  roundTimeout: unit(parseDuration)
    .prefault('10m')
    .refine((n) => n > 0, 'must be more than 0'),
});

const logSchema = z.strictObject({
  level: z.enum(LOG_LEVELS).default('info'),
});

export const configFileSchema = z
  .strictObject({
    temporal: temporalSchema.prefault({}),
    inventory: inventorySchema.prefault({}),
    node: nodeSchema.optional(),
    defaults: defaultsSchema.prefault({}),
    log: logSchema.prefault({}),
  })
  .transform((c) => ({
    temporal: c.temporal,
    inventory: c.inventory,
    node: c.node,
    // Parsed into numbers whose names carry their unit, so no caller guesses what 1 means.
    defaults: {
      codec: c.defaults.codec,
      chunkSizeBytes: c.defaults.chunkSize,
      bandwidthBytesPerSec: c.defaults.bandwidth,
      downtimeMs: c.defaults.downtime,
      maxRounds: c.defaults.maxRounds,
      roundTimeoutMs: c.defaults.roundTimeout,
    },
    log: c.log,
  }));

/** The validated configuration. Sizes are bytes, rates bytes/s (0 = unlimited), durations ms. */
export type FerryConfig = z.output<typeof configFileSchema> & {
  /** The file it was read from, if any. */
  file?: string;
};

export type NodeConfig = NonNullable<FerryConfig['node']>;
