// Serves a disk image (raw or qcow2) on a unix socket with qemu-nbd (Debian: qemu-utils), so the
// data plane can write image formats through NbdDiskTarget. The server is detached like the QEMU
// instances: it outlives a crashed worker, and the next one stops it through its pid file.
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { NbdClient } from './nbd-client.js';

export const DEFAULT_QEMU_NBD = 'qemu-nbd';

export type ImageFormat = 'raw' | 'qcow2';
const FORMATS: readonly ImageFormat[] = ['raw', 'qcow2'];

export interface ServeImageOptions {
  path: string;
  format: ImageFormat;
  socketPath: string;
  writable: boolean;
  /**
   * Read-only only: open the image although another process holds its lock (`--force-share`).
   * For an image whose QEMU has stopped and inactivated it (flushed, writes nothing more).
   */
  forceShare?: boolean;
  /** Default: `${socketPath}.pid`. */
  pidFile?: string;
  /** qemu-nbd's stdout and stderr. Default: `${socketPath}.log`. */
  logFile?: string;
  /** How long qemu-nbd may take to accept connections. Default 15 s. */
  readyTimeoutMs?: number;
  qemuNbdBinary?: string;
}

export interface ServedImage {
  pid: number;
  socketPath: string;
  pidFile: string;
  /** qemu-nbd's default export name. */
  exportName: string;
  /** SIGTERM, wait for the exit (SIGKILL after `graceMs`), remove the pid file and socket. */
  stop(graceMs?: number): Promise<void>;
}

/** Connections qemu-nbd accepts at once (see serveImage). */
const MAX_CLIENTS = 8;

async function sleep(ms: number): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
}

async function logTail(logFile: string): Promise<string> {
  const log = await readFile(logFile, 'utf8').catch(() => '');
  return log.trim().split('\n').slice(-5).join('\n') || 'no output';
}

/** Whether a full NBD handshake succeeds within `ms` (a bare connect would make qemu-nbd log a failed negotiation). */
async function accepts(socketPath: string, ms: number): Promise<boolean> {
  const attempt = NbdClient.connect({ socketPath, exportName: '' });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>((r) => (timer = setTimeout(() => r(null), ms)));
  try {
    const c = await Promise.race([attempt, timeout]);
    if (c === null) {
      attempt.then((late) => late.close(), () => undefined);
      return false;
    }
    await c.close();
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

export async function serveImage(o: ServeImageOptions): Promise<ServedImage> {
  if (!FORMATS.includes(o.format)) throw new FerryError(ErrorTypes.BadInput, `image format ${JSON.stringify(o.format)} is not one of ${FORMATS.join(', ')}`);
  // Absolute: QEMU reads a leading `proto:` (nbd:, json:, ...) in a relative name as a protocol.
  const image = resolve(o.path);
  const socketPath = resolve(o.socketPath);
  // sun_path holds 108 bytes with its NUL; a longer path would fail inside qemu-nbd, less clearly.
  if (Buffer.byteLength(socketPath) > 107) throw new FerryError(ErrorTypes.BadInput, `socket path ${socketPath} is too long for a unix socket`);
  const pidFile = resolve(o.pidFile ?? `${socketPath}.pid`);
  const logFile = resolve(o.logFile ?? `${socketPath}.log`);
  const live = await servedImagePid(pidFile);
  if (live !== null) {
    throw new FerryError(ErrorTypes.DriverError, `qemu-nbd pid ${live} still runs with pid file ${pidFile}: stop it (stopServedImage) before serving again`);
  }
  // A stale socket left by a killed server: removed so the readiness probe can only reach ours.
  await rm(socketPath, { force: true });
  // Unlocked (qemu-nbd 7.2 has no --force-share): the image as options, its file's locking off.
  // Commas are doubled, QEMU's escape inside an option string.
  const unlocked = o.forceShare === true && !o.writable;
  const args = [
    // Always explicit: probing would let a guest that writes a qcow2 header into a raw disk turn it into a qcow2 image.
    ...(unlocked ? ['--image-opts'] : [`--format=${o.format}`]),
    `--socket=${socketPath}`,
    `--pid-file=${pidFile}`,
    // Without --persistent qemu-nbd exits when its first client disconnects (our readiness probe,
    // or a receiver that reconnects after a dropped stream).
    '--persistent',
    // More than one client: with --shared=1 a second client (a replaced receiver, a digest reader)
    // is left unanswered in the listen backlog until the first leaves. All clients share one
    // block layer in this one process, so their reads and writes stay coherent.
    `--shared=${MAX_CLIENTS}`,
    // writeback + NBD flush: the receiver acknowledges only after datasync, which is an fdatasync
    // here; O_DIRECT (none) would fail on tmpfs and differ from the destination QEMU's cache mode.
    '--cache=writeback',
    // WRITE_ZEROES may deallocate: zeroed ranges stay sparse (no --detect-zeroes: NbdDiskTarget
    // already sends zeros as WRITE_ZEROES, so scanning every write would only cost CPU).
    '--discard=unmap',
    ...(o.writable ? [] : ['--read-only']),
    '--',
    unlocked ? `driver=${o.format},file.driver=file,file.filename=${image.replaceAll(',', ',,')},file.locking=off` : image,
  ];
  const bin = o.qemuNbdBinary ?? DEFAULT_QEMU_NBD;
  const logFd = openSync(logFile, 'w');
  let child;
  try {
    // A log file rather than a pipe: a detached server must not die of SIGPIPE once the worker is gone.
    child = spawn(bin, args, { detached: true, stdio: ['ignore', logFd, logFd] });
  } finally {
    closeSync(logFd);
  }
  child.unref();
  let exitInfo: string | null = null;
  let spawnError: FerryError | null = null;
  const exited = new Promise<void>((r) => {
    child.once('exit', (code, signal) => {
      exitInfo = signal ? `signal ${signal}` : `exit ${code}`;
      r();
    });
    child.once('error', (err: NodeJS.ErrnoException) => {
      spawnError =
        err.code === 'ENOENT'
          ? new FerryError(ErrorTypes.DriverError, `${bin} not found: install qemu-utils (Debian) or set qemuNbdBinary`)
          : new FerryError(ErrorTypes.DriverError, `cannot start ${bin}: ${err.message}`);
      exitInfo ??= 'spawn failed';
      r();
    });
  });
  const pid = child.pid;

  const stop = async (graceMs = 10_000): Promise<void> => {
    if (exitInfo === null && pid !== undefined) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const gone = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (!gone) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
        await exited;
      }
      // qemu-nbd removes its socket on SIGTERM but not on SIGKILL. Only when we stopped it: a
      // server that died earlier may have left the path to a newer one.
      await rm(socketPath, { force: true });
    }
    await removeIfOurs(pidFile, pid);
  };

  const deadline = Date.now() + (o.readyTimeoutMs ?? 15_000);
  for (;;) {
    if (spawnError) throw spawnError;
    if (exitInfo !== null) {
      throw new FerryError(ErrorTypes.DriverError, `qemu-nbd for ${image} exited before serving (${exitInfo}): ${await logTail(logFile)}`);
    }
    if (await accepts(socketPath, 1000)) break;
    if (Date.now() > deadline) {
      await stop(1000);
      throw new FerryError(ErrorTypes.DriverError, `qemu-nbd for ${image} did not accept connections on ${socketPath} within ${o.readyTimeoutMs ?? 15_000} ms: ${await logTail(logFile)}`);
    }
    await sleep(50);
  }
  return { pid: pid!, socketPath, pidFile, exportName: '', stop };
}

async function removeIfOurs(pidFile: string, pid: number | undefined): Promise<void> {
  const text = await readFile(pidFile, 'utf8').catch(() => null);
  if (text !== null && Number.parseInt(text.trim(), 10) === pid) await rm(pidFile, { force: true });
}

/** The argv of a live qemu-nbd started with this pid file, or null (no file, dead or recycled pid). */
async function servedArgv(pidFile: string): Promise<{ pid: number; argv: string[] } | null> {
  let pid: number;
  try {
    pid = Number.parseInt((await readFile(pidFile, 'utf8')).trim(), 10);
  } catch {
    return null;
  }
  if (!Number.isInteger(pid) || pid <= 1) return null;
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    // A recycled pid is some other program, or another qemu-nbd: ours names this pid file.
    if (!basename(argv[0] ?? '').startsWith('qemu-nbd') || !argv.includes(`--pid-file=${pidFile}`)) return null;
    if (/\) Z /.test(await readFile(`/proc/${pid}/stat`, 'utf8'))) return null;
    return { pid, argv };
  } catch {
    return null;
  }
}

/** The pid of the live qemu-nbd that wrote `pidFile`, or null. */
export async function servedImagePid(pidFile: string): Promise<number | null> {
  return (await servedArgv(resolve(pidFile)))?.pid ?? null;
}

/**
 * Stops a qemu-nbd by its pid file, e.g. one a crashed worker left behind. Idempotent: a missing
 * pid file, a dead process or a pid now used by another program are all "already stopped".
 */
export async function stopServedImage(pidFile: string, graceMs = 10_000): Promise<void> {
  pidFile = resolve(pidFile);
  const found = await servedArgv(pidFile);
  if (found) {
    const socketArg = found.argv.find((a) => a.startsWith('--socket='));
    try {
      process.kill(found.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const deadline = Date.now() + graceMs;
    let killed = false;
    while ((await servedArgv(pidFile)) !== null) {
      if (Date.now() > deadline && !killed) {
        killed = true;
        try {
          process.kill(found.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
      if (Date.now() > deadline + 5000) throw new FerryError(ErrorTypes.DriverError, `qemu-nbd pid ${found.pid} does not die`);
      await sleep(50);
    }
    // qemu-nbd removes its socket on SIGTERM but not on SIGKILL.
    if (socketArg) await rm(socketArg.slice('--socket='.length), { force: true });
  }
  // qemu-nbd never removes its pid file.
  await rm(pidFile, { force: true });
}
