// QEMU processes of one node: where their files live, how they are started detached, found again
// after a worker restart (pidfile + /proc check) and stopped. Nothing is kept in memory.
import { spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { InstanceSpec } from '../driver.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { ID_PATTERN } from '../../shared/names.js';
import { pickAccelerator, type Accelerator } from './accelerator.js';

export const DEFAULT_QEMU = 'qemu-system-x86_64';
/** Guest port of the lab workload's request server (src/labs/guest/init). */
export const GUEST_SERVICE_PORT = 7000;

export interface InstancePaths {
  dir: string;
  qmp: string;
  nbd: string;
  pid: string;
  serial: string;
  log: string;
  tracking: string;
  rounds: string;
  memoryUri: string;
}

export function instancePaths(stateDir: string, id: string): InstancePaths {
  if (!ID_PATTERN.test(id)) throw new FerryError(ErrorTypes.BadInput, `bad instance id ${JSON.stringify(id)}: use ${ID_PATTERN}`);
  const dir = join(stateDir, id);
  const p: InstancePaths = {
    dir,
    qmp: join(dir, 'qmp.sock'),
    nbd: join(dir, 'nbd.sock'),
    pid: join(dir, 'qemu.pid'),
    serial: join(dir, 'serial.log'),
    log: join(dir, 'qemu.log'),
    tracking: join(dir, 'tracking.json'),
    rounds: join(dir, 'rounds'),
    memoryUri: join(dir, 'memory-uri'),
  };
  // sun_path holds 108 bytes; a longer state dir would fail deep inside QEMU with a vaguer error.
  if (Buffer.byteLength(p.qmp) > 100) throw new FerryError(ErrorTypes.BadInput, `state dir ${stateDir} is too long for unix sockets`);
  return p;
}

/** QEMU's option parser treats commas as separators; we refuse them rather than escape everywhere. */
function safePath(p: string, what: string): string {
  if (!p || /[,\n\0]/.test(p)) throw new FerryError(ErrorTypes.BadInput, `${what} path ${JSON.stringify(p)} must not contain commas or newlines`);
  return p;
}

/** The pid of the instance's live QEMU, or null (pidfile missing, process gone or pid reused). */
export async function livePid(paths: InstancePaths): Promise<number | null> {
  let pid: number;
  try {
    pid = Number.parseInt((await readFile(paths.pid, 'utf8')).trim(), 10);
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 1) return null;
  try {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8');
    // A recycled pid belongs to some other program: only ours names this instance's QMP socket.
    if (!cmdline.includes(paths.qmp)) return null;
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    if (/\) Z /.test(stat)) return null;
    return pid;
  } catch {
    return null;
  }
}

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

/** Signals QEMU and waits until it is gone (SIGKILL after `graceMs`). */
export async function stopQemu(paths: InstancePaths, graceMs = 5000): Promise<void> {
  const pid = await livePid(paths);
  if (pid === null) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while ((await livePid(paths)) !== null) {
    if (Date.now() > deadline) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await sleep(100);
      if (Date.now() > deadline + 5000) throw new FerryError(ErrorTypes.DriverError, `QEMU pid ${pid} does not die`);
    }
    await sleep(50);
  }
}

export interface LaunchOptions {
  spec: InstanceSpec;
  paths: InstancePaths;
  diskPath: string;
  /** Destination: `-S -incoming defer`. */
  incoming: boolean;
  netns?: string;
  qemuBinary?: string;
  /** KVM or TCG (accelerator.ts picks it for this host); default tcg. */
  accel?: Accelerator;
}

/** QEMU's command line for an instance; source and destination differ only in -incoming and disk. */
export function qemuArgs(o: LaunchOptions): string[] {
  const { spec, paths } = o;
  if (!spec.boot?.kernel) throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} has no boot kernel (spec.boot.kernel)`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1 || spec.vcpus > 64) throw new FerryError(ErrorTypes.BadInput, `bad vcpus ${spec.vcpus}`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 16) throw new FerryError(ErrorTypes.BadInput, `bad memoryMiB ${spec.memoryMiB}`);
  const args = [
    '-name', `ferry-${spec.id}`,
    '-accel', o.accel ?? 'tcg',
    '-cpu', 'qemu64',
    '-smp', String(spec.vcpus),
    '-m', String(spec.memoryMiB),
    // -nographic cannot be combined with -daemonize; -display none + a serial file is its
    // detached equivalent (no console on our stdio, serial output kept for debugging).
    '-nodefaults', '-display', 'none', '-monitor', 'none',
    '-serial', `file:${safePath(paths.serial, 'serial log')}`,
    '-chardev', `socket,id=qmp,path=${safePath(paths.qmp, 'QMP socket')},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-pidfile', paths.pid,
    '-daemonize',
    '-kernel', safePath(spec.boot.kernel, 'kernel'),
  ];
  if (spec.boot.initrd) args.push('-initrd', safePath(spec.boot.initrd, 'initrd'));
  if (spec.boot.append) args.push('-append', spec.boot.append);
  // Buffered I/O (cache.direct=off) with flushes honoured: the host page cache is one cache per
  // file shared by every process, so the data plane's writes into a paused destination's disk are
  // what QEMU reads on resume, and guest flushes still reach the disk. JSON -blockdev: no escaping.
  args.push(
    '-blockdev',
    JSON.stringify({ driver: 'file', filename: o.diskPath, 'node-name': 'file0', cache: { direct: false, 'no-flush': false } }),
    '-blockdev',
    JSON.stringify({ driver: 'raw', file: 'file0', 'node-name': 'disk0', cache: { direct: false, 'no-flush': false } }),
    '-device', 'virtio-blk-pci,drive=disk0,id=vda',
  );
  const serviceHost = typeof spec.extra?.serviceHost === 'string' ? spec.extra.serviceHost : '';
  if (serviceHost && !/^\d{1,3}(\.\d{1,3}){3}$/.test(serviceHost)) throw new FerryError(ErrorTypes.BadInput, `bad serviceHost ${serviceHost}`);
  let netdev = 'user,id=net0';
  if (spec.servicePort !== undefined) {
    if (!Number.isInteger(spec.servicePort) || spec.servicePort < 1 || spec.servicePort > 65535) {
      throw new FerryError(ErrorTypes.BadInput, `bad servicePort ${spec.servicePort}`);
    }
    netdev += `,hostfwd=tcp:${serviceHost}:${spec.servicePort}-:${GUEST_SERVICE_PORT}`;
  }
  args.push('-netdev', netdev, '-device', 'virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:fe:44:01');
  if (o.incoming) args.push('-S', '-incoming', 'defer');
  return args;
}

/**
 * Starts QEMU detached: -daemonize gives it its own session (it outlives the worker) and makes the
 * launch synchronous: QEMU exits 0 only once its QMP socket listens, or non-zero with the reason
 * in qemu.log.
 */
export async function launchQemu(o: LaunchOptions): Promise<number> {
  const args = qemuArgs({ ...o, accel: o.accel ?? (await pickAccelerator(o.qemuBinary ?? DEFAULT_QEMU)) });
  await mkdir(o.paths.dir, { recursive: true });
  const bin = o.qemuBinary ?? DEFAULT_QEMU;
  const [cmd, argv] = o.netns ? ['ip', ['netns', 'exec', o.netns, bin, ...args]] : [bin, args];
  const logFd = openSync(o.paths.log, 'a');
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(cmd, argv, { detached: true, stdio: ['ignore', logFd, logFd] });
      child.on('error', (err: NodeJS.ErrnoException) => {
        reject(
          err.code === 'ENOENT'
            ? new FerryError(ErrorTypes.DriverError, `${cmd} not found: install qemu-system-x86 (Debian) or set qemuBinary`)
            : new FerryError(ErrorTypes.DriverError, `cannot start QEMU: ${err.message}`),
        );
      });
      child.on('exit', async (code) => {
        if (code === 0) return resolve();
        const log = await readFile(o.paths.log, 'utf8').catch(() => '');
        const tail = log.trim().split('\n').slice(-5).join('\n');
        reject(new FerryError(ErrorTypes.DriverError, `QEMU for ${o.spec.id} failed to start (exit ${code}): ${tail || 'no output'}`));
      });
    });
  } finally {
    closeSync(logFd);
  }
  const pid = await livePid(o.paths);
  if (pid === null) throw new FerryError(ErrorTypes.DriverError, `QEMU for ${o.spec.id} started but is not running (see ${o.paths.log})`);
  return pid;
}
