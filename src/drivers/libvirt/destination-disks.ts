// The guest's disks on the destination: created at the paths its XML names, raw or qcow2, and
// recorded, so a rollback removes only what Ferry made (never a file that was there before).
// qcow2 images are written through qemu-nbd (the receiver writes raw files only); the server runs
// while a stream or digest has the disk open and stops with the last one, because the destination
// QEMU takes the image's lock when it activates the disk at switchover.
import { execFile } from 'node:child_process';
import { mkdir, open, readdir, readFile, rename, rm, stat, statfs, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import type { DiskSpec } from '../../shared/instance.js';
import type { DiskTarget } from '../../dataplane/types.js';
import { openLocalDiskTarget } from '../../dataplane/disk-target.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { NbdDiskTarget } from '../qemu/nbd-disk-target.js';
import { serveImage, stopServedImage, type ServedImage } from '../qemu/qemu-nbd.js';
import { exists } from '../file-exists.js';

const execFileP = promisify(execFile);

function createdFile(dir: string): string {
  return join(dir, 'created-disks.json');
}

export async function createdDisks(dir: string): Promise<string[]> {
  try {
    return JSON.parse(await readFile(createdFile(dir), 'utf8')) as string[];
  } catch {
    return [];
  }
}

async function recordCreated(dir: string, paths: string[]): Promise<void> {
  await mkdir(dir, { recursive: true });
  await writeFile(`${createdFile(dir)}.tmp`, JSON.stringify(paths));
  await rename(`${createdFile(dir)}.tmp`, createdFile(dir));
}

/** Room for every disk, on the file system each will live on; no disk may exist already (unless Ferry made it). */
export async function checkDestinationDisks(dir: string, disks: DiskSpec[]): Promise<void> {
  const mine = new Set(await createdDisks(dir));
  const need = new Map<string, { free: number; bytes: number; where: string }>();
  for (const d of disks) {
    const parent = dirname(d.path);
    if (!(await exists(parent))) throw new FerryError(ErrorTypes.InvalidDestination, `disk ${d.vdev}: folder ${parent} does not exist on this host`);
    if ((await exists(d.path)) && !mine.has(d.path)) {
      throw new FerryError(ErrorTypes.InvalidDestination, `disk ${d.vdev}: ${d.path} already exists on this host; Ferry never overwrites a file it did not create`);
    }
    const fs = await statfs(parent);
    const key = `${fs.type}:${fs.blocks}:${fs.bfree}:${(await stat(parent)).dev}`;
    const entry = need.get(key) ?? { free: fs.bavail * fs.bsize, bytes: 0, where: parent };
    entry.bytes += d.bytes;
    need.set(key, entry);
  }
  for (const n of need.values()) {
    if (n.free < n.bytes) throw new FerryError(ErrorTypes.DestinationDiskFull, `${n.free} bytes free under ${n.where}, the disks going there need ${n.bytes}`);
  }
}

/** Creates each disk (sparse raw, or an empty qcow2 of the same virtual size). Idempotent. */
export async function createDestinationDisks(dir: string, disks: DiskSpec[]): Promise<void> {
  const mine = await createdDisks(dir);
  for (const d of disks) {
    if (mine.includes(d.path) && (await exists(d.path))) continue;
    if (await exists(d.path)) throw new FerryError(ErrorTypes.InvalidDestination, `disk ${d.vdev}: ${d.path} appeared on this host after the checks; it is left alone`);
    // Recorded before it exists: a crash in between leaves a record of nothing, which is harmless.
    mine.push(d.path);
    await recordCreated(dir, mine);
    if (d.format === 'qcow2') {
      try {
        await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '--', d.path, String(d.bytes)]);
      } catch (err) {
        throw new FerryError(ErrorTypes.DriverError, `qemu-img create ${d.path}: ${(err as { stderr?: string }).stderr?.trim() || String(err)}`);
      }
    } else {
      const fh = await open(d.path, 'wx');
      try {
        await fh.truncate(d.bytes);
      } finally {
        await fh.close();
      }
    }
  }
}

/** Removes the disks Ferry created here (rollback). */
export async function removeCreatedDisks(dir: string): Promise<void> {
  await stopQemuNbd(dir);
  for (const p of await createdDisks(dir)) await rm(p, { force: true });
  await rm(createdFile(dir), { force: true });
}

const served = new Map<string, { image: ServedImage; users: number }>();

function nbdSocket(dir: string, d: DiskSpec): string {
  return join(dir, `dest-${d.vdev}.nbd`);
}

/** Opens one destination disk for writing (the receiver) or reading (the digest). */
export async function openDestinationTarget(dir: string, d: DiskSpec): Promise<DiskTarget> {
  if (d.format === 'raw') return openLocalDiskTarget(d.path);
  const socketPath = nbdSocket(dir, d);
  let entry = served.get(socketPath);
  if (!entry) {
    await stopServedImage(`${socketPath}.pid`); // one left behind by a worker that died
    entry = { image: await serveImage({ path: d.path, format: d.format, socketPath, writable: true }), users: 0 };
    served.set(socketPath, entry);
  }
  entry.users += 1;
  const target = await NbdDiskTarget.open(socketPath).catch(async (e: unknown) => {
    await release(socketPath);
    throw e;
  });
  return {
    size: () => target.size(),
    truncate: (n) => target.truncate(n),
    read: (o, l) => target.read(o, l),
    write: (o, b) => target.write(o, b),
    datasync: () => target.datasync(),
    close: async () => {
      // The server may be gone already (stopped before the destination runs): nothing to flush then.
      await target.close().catch(() => undefined);
      await release(socketPath);
    },
  };
}

async function release(socketPath: string): Promise<void> {
  const entry = served.get(socketPath);
  if (!entry) return;
  entry.users -= 1;
  if (entry.users > 0) return;
  served.delete(socketPath);
  await entry.image.stop();
}

/** Stops every qemu-nbd of this instance, this worker's or a dead one's. */
export async function stopQemuNbd(dir: string): Promise<void> {
  for (const [socketPath, entry] of served) {
    if (!socketPath.startsWith(`${dir}/`)) continue;
    served.delete(socketPath);
    await entry.image.stop();
  }
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const n of names.filter((x) => x.endsWith('.nbd.pid'))) await stopServedImage(join(dir, n));
}
