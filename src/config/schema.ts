// The shape of ferry.yaml, with defaults, limits and unit parsing. Unknown keys are refused so a
// typo ("adress") is an error instead of a silently ignored setting.
import { z } from 'zod';
import { defaultsSectionSchema } from '../shared/options-schema.js';
import { ID_PATTERN } from '../shared/names.js';
import { HYPERVISOR_KINDS } from '../shared/instance.js';
import { isSocketAddress, joinHostPort, splitHostPort } from '../shared/host-port.js';

export { MAX_DOWNTIME_MS } from '../shared/options.js';

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

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

const absolute = pathString.refine((p) => p.startsWith('/'), 'must be absolute');
const pathMapSchema = z.array(z.strictObject({ from: absolute, to: absolute }));

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
  pathMap: pathMapSchema.optional(),
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

// A libvirt node: the worker runs on the host and talks to its libvirtd locally (docs/libvirt.md).
const libvirtSchema = z.strictObject({
  /** libvirtd's socket; modular daemons use /run/libvirt/virtqemud-sock. */
  socket: pathString.default('/run/libvirt/libvirt-sock'),
  /** Where incoming guests' disks go: prefix rewrites, first match wins; default: the same path. */
  pathMap: pathMapSchema.optional(),
});

// Only node workers have this section; `loadConfig({ nodeName })` lets `--node NAME` fill in
// the name before validation, so the output is always complete.
const nodeSchema = z
  .strictObject({
    name: z.string().regex(ID_PATTERN, 'must be 1-63 characters of a-z, 0-9 and "-", starting with a letter or digit'),
    hypervisor: z.enum(HYPERVISOR_KINDS).optional(),
    dataAddress: address,
    stateDir: pathString.optional(),
    xen: xenSchema.optional(),
    libvirt: libvirtSchema.optional(),
  })
  .transform((n) => ({ ...n, stateDir: n.stateDir ?? `/var/lib/ferry/nodes/${n.name}` }));

// Per-migration defaults: the same schema, keys and limits as `ferry migrate`'s flags and the
// workflow input's options (src/shared/options-schema.ts).
const defaultsSchema = defaultsSectionSchema;

const logSchema = z.strictObject({
  level: z.enum(LOG_LEVELS).default('info'),
});

// Prometheus metrics of the worker (src/workers/metrics.ts), served only when the section is
// present. `address` serves Ferry's metrics plus the Temporal SDK's, which the SDK exports on
// `temporalAddress` (an IP and port; default: address's port + 1 on the same host).
const hostPort = address.refine((a) => splitHostPort(a) !== undefined, 'must be host:port ([v6]:port for IPv6)');
const metricsSchema = z
  .strictObject({
    address: hostPort.default('127.0.0.1:9464'),
    temporalAddress: hostPort.refine(isSocketAddress, 'must be an IP address and port (the Temporal SDK takes no host names)').optional(),
  })
  .transform((m, ctx) => {
    if (m.temporalAddress !== undefined) return { address: m.address, temporalAddress: m.temporalAddress };
    const { host, port } = splitHostPort(m.address)!;
    const temporalAddress = joinHostPort(host, port + 1);
    if (port === 0 || port === 65535 || !isSocketAddress(temporalAddress)) {
      ctx.addIssue({ code: 'custom', path: ['temporalAddress'], message: `is required when address is ${m.address} (it defaults to an IP address and address's port + 1)` });
      return z.NEVER;
    }
    return { address: m.address, temporalAddress };
  });

export const configFileSchema = z
  .strictObject({
    temporal: temporalSchema.prefault({}),
    inventory: inventorySchema.prefault({}),
    node: nodeSchema.optional(),
    defaults: defaultsSchema.prefault({}),
    log: logSchema.prefault({}),
    metrics: metricsSchema.optional(),
  })
  .transform((c) => ({
    temporal: c.temporal,
    inventory: c.inventory,
    node: c.node,
    // Only the keys the file (or environment) set, parsed into MigrationOptions' units; the
    // controller lays them under what each migration asks for.
    defaults: c.defaults,
    log: c.log,
    metrics: c.metrics,
  }));

/** The validated configuration. Sizes are bytes, rates bytes/s (0 = unlimited), durations ms. */
export type FerryConfig = z.output<typeof configFileSchema> & {
  /** The file it was read from, if any. */
  file?: string;
};

export type NodeConfig = NonNullable<FerryConfig['node']>;
