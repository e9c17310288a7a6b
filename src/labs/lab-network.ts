// The two-host lab on one machine: network namespaces `ferry-a` and `ferry-b` stand in for two
// hypervisor hosts. Each has a management veth to the root namespace (where the Temporal dev
// server listens on the dummy `ferry0` address) and the pair shares a migration link `mig0`
// that `tc` shapes like the paper's LAN. All commands are spawned with argument arrays.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { promisify } from 'node:util';
import { FerryError, ErrorTypes } from '../shared/errors.js';

const execFileP = promisify(execFile);

export const LAB_CONTROL_ADDRESS = '10.213.0.1';
export const LAB_ROOT_DEVICE = 'ferry0';

export interface LabNode {
  name: string;
  netns: string;
  /** Address on the migration link (data plane and memory stream). */
  dataAddress: string;
  /** Address on the management veth (reachable from the root namespace). */
  mgmtAddress: string;
  /** Root-namespace end of the management veth. */
  rootDevice: string;
  rootAddress: string;
}

export const labNodes: Record<'node-a' | 'node-b', LabNode> = {
  'node-a': { name: 'node-a', netns: 'ferry-a', dataAddress: '10.213.9.1', mgmtAddress: '10.213.1.2', rootDevice: 'fa0', rootAddress: '10.213.1.1' },
  'node-b': { name: 'node-b', netns: 'ferry-b', dataAddress: '10.213.9.2', mgmtAddress: '10.213.2.2', rootDevice: 'fb0', rootAddress: '10.213.2.1' },
};

const MIG_DEV = 'mig0';
const MIG_PREFIX = 24;
const MGMT_PREFIX = 30;

async function sh(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args);
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw new FerryError(ErrorTypes.DriverError, `${cmd} not found: install iproute2`);
    throw new FerryError(ErrorTypes.DriverError, `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`);
  }
}

async function quiet(cmd: string, args: string[]): Promise<boolean> {
  try {
    await execFileP(cmd, args);
    return true;
  } catch {
    return false;
  }
}

async function namespaces(): Promise<string[]> {
  const out = await sh('ip', ['netns', 'list']);
  return out.split('\n').map((l) => l.split(' ')[0]).filter(Boolean);
}

async function linkExists(dev: string, netns?: string): Promise<boolean> {
  const args = netns ? ['-n', netns, 'link', 'show', dev] : ['link', 'show', dev];
  return quiet('ip', args);
}

/** Adds an address unless present (`ip addr replace` is idempotent). */
async function addr(dev: string, cidr: string, netns?: string): Promise<void> {
  await sh('ip', [...(netns ? ['-n', netns] : []), 'addr', 'replace', cidr, 'dev', dev]);
}

async function up(dev: string, netns?: string): Promise<void> {
  await sh('ip', [...(netns ? ['-n', netns] : []), 'link', 'set', dev, 'up']);
}

/** Creates whatever part of the lab is missing; safe to call any number of times. */
export async function ensureLabNetwork(): Promise<void> {
  if (!(await linkExists(LAB_ROOT_DEVICE))) {
    // Kernels without the dummy driver (no modules in some VMs) get a veth pair instead: an
    // address on an up link serves local connections all the same.
    if (!(await quiet('ip', ['link', 'add', LAB_ROOT_DEVICE, 'type', 'dummy']))) {
      await sh('ip', ['link', 'add', LAB_ROOT_DEVICE, 'type', 'veth', 'peer', 'name', `${LAB_ROOT_DEVICE}-peer`]);
      await up(`${LAB_ROOT_DEVICE}-peer`);
    }
  }
  await addr(LAB_ROOT_DEVICE, `${LAB_CONTROL_ADDRESS}/32`);
  await up(LAB_ROOT_DEVICE);

  const existing = await namespaces();
  for (const node of Object.values(labNodes)) {
    if (!existing.includes(node.netns)) await sh('ip', ['netns', 'add', node.netns]);
    await up('lo', node.netns);
    if (!(await linkExists(node.rootDevice))) {
      // The namespace end is created under a temporary name, then moved and renamed mgmt0.
      const tmp = `${node.rootDevice}-ns`;
      await quiet('ip', ['link', 'del', tmp]);
      await quiet('ip', ['-n', node.netns, 'link', 'del', 'mgmt0']);
      await sh('ip', ['link', 'add', node.rootDevice, 'type', 'veth', 'peer', 'name', tmp]);
      await sh('ip', ['link', 'set', tmp, 'netns', node.netns]);
      await sh('ip', ['-n', node.netns, 'link', 'set', tmp, 'name', 'mgmt0']);
    }
    await addr(node.rootDevice, `${node.rootAddress}/${MGMT_PREFIX}`);
    await up(node.rootDevice);
    await addr('mgmt0', `${node.mgmtAddress}/${MGMT_PREFIX}`, node.netns);
    await up('mgmt0', node.netns);
    await sh('ip', ['-n', node.netns, 'route', 'replace', 'default', 'via', node.rootAddress]);
  }

  const a = labNodes['node-a'];
  const b = labNodes['node-b'];
  if (!(await linkExists(MIG_DEV, a.netns)) || !(await linkExists(MIG_DEV, b.netns))) {
    await quiet('ip', ['-n', a.netns, 'link', 'del', MIG_DEV]);
    await quiet('ip', ['-n', b.netns, 'link', 'del', MIG_DEV]);
    await quiet('ip', ['link', 'del', 'ferry-mig-a']);
    await sh('ip', ['link', 'add', 'ferry-mig-a', 'type', 'veth', 'peer', 'name', 'ferry-mig-b']);
    await sh('ip', ['link', 'set', 'ferry-mig-a', 'netns', a.netns]);
    await sh('ip', ['link', 'set', 'ferry-mig-b', 'netns', b.netns]);
    await sh('ip', ['-n', a.netns, 'link', 'set', 'ferry-mig-a', 'name', MIG_DEV]);
    await sh('ip', ['-n', b.netns, 'link', 'set', 'ferry-mig-b', 'name', MIG_DEV]);
  }
  for (const n of [a, b]) {
    await addr(MIG_DEV, `${n.dataAddress}/${MIG_PREFIX}`, n.netns);
    await up(MIG_DEV, n.netns);
  }
}

/** Removes the lab (namespaces take their veth ends with them). Safe when absent. */
export async function destroyLabNetwork(): Promise<void> {
  const existing = await namespaces().catch(() => [] as string[]);
  for (const node of Object.values(labNodes)) {
    await quiet('ip', ['link', 'del', node.rootDevice]);
    if (existing.includes(node.netns)) await quiet('ip', ['netns', 'del', node.netns]);
  }
  await quiet('ip', ['link', 'del', LAB_ROOT_DEVICE]);
}

/**
 * Shapes both ends of the migration link to `rateMbit` (token bucket), or removes shaping with
 * null. tbf: one qdisc per direction, no classes needed for a single flow class.
 */
export async function shapeMigrationLink(rateMbit: number | null): Promise<void> {
  if (rateMbit !== null && (!Number.isFinite(rateMbit) || rateMbit <= 0 || rateMbit > 100_000)) {
    throw new FerryError(ErrorTypes.BadInput, `link rate must be between 0 and 100000 Mbit/s, got ${rateMbit}`);
  }
  for (const n of Object.values(labNodes)) {
    if (rateMbit === null) {
      await quiet('tc', ['-n', n.netns, 'qdisc', 'del', 'dev', MIG_DEV, 'root']);
      continue;
    }
    // Burst: at least 10 ms of traffic, so the bucket does not throttle below the rate.
    const burstBytes = Math.max(32 * 1024, Math.ceil((rateMbit * 1e6) / 8 / 100));
    await sh('tc', [
      '-n', n.netns, 'qdisc', 'replace', 'dev', MIG_DEV, 'root', 'tbf',
      'rate', `${rateMbit}mbit`, 'burst', String(burstBytes), 'latency', '50ms',
    ]);
  }
}

/** Spawns `cmd args` inside `ns` (`ip netns exec NS cmd ...args`), no shell involved. */
export function runInNamespace(ns: string, cmd: string, args: readonly string[], opts: SpawnOptions = {}): ChildProcess {
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(ns)) throw new FerryError(ErrorTypes.BadInput, `bad namespace name ${JSON.stringify(ns)}`);
  return spawn('ip', ['netns', 'exec', ns, cmd, ...args], opts);
}

/** Runs a command in a namespace to completion; rejects with its stderr on failure. */
export async function execInNamespace(ns: string, cmd: string, args: readonly string[]): Promise<string> {
  if (!/^[a-z0-9][a-z0-9-]{0,30}$/.test(ns)) throw new FerryError(ErrorTypes.BadInput, `bad namespace name ${JSON.stringify(ns)}`);
  return sh('ip', ['netns', 'exec', ns, cmd, ...args]);
}
