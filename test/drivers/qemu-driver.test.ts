// The qemu driver against real QEMU guests in the two lab namespaces: boot, dirty rounds, a full
// migration with the disk copied through openDisk()/destinationDisks(), and a cancel.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { createQemuDriver, type QemuDriver } from '../../src/drivers/qemu/qemu-driver.js';
import { instancePaths, livePid, stopQemu } from '../../src/drivers/qemu/qemu-process.js';
import { totalDiskBytes, type InstanceSpec } from '../../src/shared/instance.js';
import type { Extent } from '../../src/shared/extents.js';
import { FerryError } from '../../src/shared/errors.js';
import { ensureGuestImage, guestAppend } from '../../src/labs/guest-image.js';
import { destroyLabNetwork, ensureLabNetwork, labNodes } from '../../src/labs/lab-network.js';
import { migrateNative } from '../../src/drivers/qemu/native-migration.js';
import { guestRequest, sleep, stat, waitForStat } from './guest-service.js';

const MiB = 1024 * 1024;
/** The lab guests' one disk. */
const VDEV = 'vda';
const A = labNodes['node-a'];
const B = labNodes['node-b'];

let tmp = '';
let labWasThere = false;
let image: { kernel: string; initrd: string };
let drvA: QemuDriver;
let drvB: QemuDriver;
const specs: InstanceSpec[] = [];

function guestSpec(id: string, extra: Record<string, unknown> = {}, rate = 5): InstanceSpec {
  const spec: InstanceSpec = {
    id,
    hypervisor: 'qemu',
    vcpus: 1,
    memoryMiB: 128,
    disks: [{ vdev: VDEV, kind: 'file', path: join(tmp, 'node-a', 'disks', `${id}.raw`), format: 'raw', bytes: 64 * MiB }],
    startedBy: 'ferry',
    boot: { kernel: image.kernel, initrd: image.initrd, append: guestAppend({ rate, recbase: 1 }) },
    servicePort: 20000 + Math.floor(Math.random() * 10000),
    extra,
  };
  specs.push(spec);
  return spec;
}

async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Where the destination driver puts the guest's one disk. */
function destinationPath(dst: QemuDriver, spec: InstanceSpec): string {
  return dst.destinationDisks(spec)[0]!.path;
}

/** One round of the guest's one disk: the driver keys it by vdev and names no other disk. */
async function takeRound(drv: QemuDriver, spec: InstanceSpec, round: number): Promise<Extent[]> {
  const byDisk = await drv.takeDirtyRound(spec, round);
  expect(Object.keys(byDisk)).toEqual([VDEV]);
  return byDisk[VDEV]!;
}

/** The test's stand-in for the data plane: positioned writes of what openDisk() reads. */
async function copyExtents(src: QemuDriver, dst: QemuDriver, spec: InstanceSpec, extents: Extent[]): Promise<void> {
  const source = await src.openDisk(spec, VDEV);
  const fh = await open(destinationPath(dst, spec), 'r+');
  try {
    for (const e of extents) {
      for (let off = e.offset; off < e.offset + e.length; off += MiB) {
        const len = Math.min(MiB, e.offset + e.length - off);
        const buf = await source.read(off, len);
        await fh.write(buf, 0, len, off);
      }
    }
    await fh.sync();
  } finally {
    await fh.close();
    await source.close();
  }
}

beforeAll(async () => {
  labWasThere = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).includes(A.netns);
  await ensureLabNetwork();
  image = await ensureGuestImage();
  tmp = await mkdtemp(join(tmpdir(), 'ferry-qd-'));
  drvA = createQemuDriver({ stateDir: join(tmp, 'node-a'), netns: A.netns });
  drvB = createQemuDriver({ stateDir: join(tmp, 'node-b'), netns: B.netns });
});

afterAll(async () => {
  for (const spec of specs) {
    for (const d of [drvA, drvB]) if (d) await stopQemu(instancePaths(d.stateDir, spec.id), 0).catch(() => undefined);
  }
  if (tmp) await rm(tmp, { recursive: true, force: true });
  // Leave a lab that someone else set up (another test or a demo may be using it).
  if (!labWasThere) await destroyLabNetwork();
});

describe('qemu driver: one guest', () => {
  let spec: InstanceSpec;

  it('boots the guest, which answers stat and keeps counting', async () => {
    spec = guestSpec('qd-boot', { dirtyGranularity: 4096 });
    await drvA.start(spec);
    const pid = await livePid(drvA.paths(spec));
    await drvA.start(spec); // idempotent: the same QEMU
    expect(await livePid(drvA.paths(spec))).toBe(pid);
    expect(await drvA.state(spec)).toBe('running');
    const s1 = await waitForStat(A.mgmtAddress, spec.servicePort!);
    await sleep(1500);
    const s2 = await stat(A.mgmtAddress, spec.servicePort!);
    expect(s2.counter).toBeGreaterThan(s1.counter);
    expect(s2.seq).toBeGreaterThanOrEqual(1);
    expect(await guestRequest(A.mgmtAddress, spec.servicePort!, 'bogus')).toMatch(/^error unknown request/);
  });

  it('dirty rounds return exactly the blocks the guest wrote, each in one round', async () => {
    const recBlock = (e: Extent) => (e.offset - MiB) / 4096;
    const port = spec.servicePort!;
    const before = await stat(A.mgmtAddress, port);
    await drvA.startDirtyTracking(spec);
    await drvA.startDirtyTracking(spec); // idempotent
    const started = await stat(A.mgmtAddress, port);

    const rounds: { extents: Extent[]; lo: number; hi: number }[] = [];
    for (let r = 1; r <= 2; r++) {
      await sleep(2000);
      const lo = (await stat(A.mgmtAddress, port)).seq;
      const extents = await takeRound(drvA, spec, r);
      const hi = (await stat(A.mgmtAddress, port)).seq;
      rounds.push({ extents, lo, hi });
    }
    // A retried activity asks for the same round again: same answer, no new round consumed.
    expect(await takeRound(drvA, spec, 2)).toEqual(rounds[1]!.extents);

    const q = await guestRequest(A.mgmtAddress, port, 'quiesce');
    const last = Number(/^quiesced seq=(\d+)$/.exec(q)?.[1] ?? NaN);
    expect(last).toBeGreaterThan(rounds[1]!.hi - 1);
    const finalExtents = await takeRound(drvA, spec, 3);
    rounds.push({ extents: finalExtents, lo: last, hi: last });

    const seen = new Map<number, number>();
    rounds.forEach((rd, i) => {
      for (const e of rd.extents) {
        for (let off = e.offset; off < e.offset + e.length; off += 4096) {
          const n = recBlock({ offset: off, length: 4096 });
          expect(Number.isInteger(n) && n >= 1, `round ${i + 1} reports a block that is no record: ${off}`).toBe(true);
          expect(seen.has(n), `record ${n} reported in two rounds`).toBe(false);
          seen.set(n, i);
        }
      }
    });
    // Every record written after tracking started is in some round; nothing before it is.
    for (let n = started.seq + 2; n <= last; n++) expect(seen.has(n), `record ${n} missing`).toBe(true);
    for (const n of seen.keys()) expect(n).toBeGreaterThan(before.seq);
    // Each record is in the round that was open when it was written (boundaries known to +-1).
    const prevHi = [started.seq, rounds[0]!.hi, rounds[1]!.hi];
    const prevLo = [before.seq, rounds[0]!.lo, rounds[1]!.lo];
    for (const [n, i] of seen) {
      expect(n).toBeGreaterThan(prevLo[i]!);
      expect(n).toBeLessThanOrEqual(rounds[i]!.hi + 1);
    }
    for (let i = 0; i < 2; i++) {
      for (let n = prevHi[i]! + 2; n <= rounds[i]!.lo; n++) expect(seen.get(n), `record ${n} in wrong round`).toBe(i);
    }
    expect(rounds[0]!.extents.length + rounds[1]!.extents.length).toBeGreaterThan(0);

    await drvA.stopDirtyTracking(spec);
    await expect(drvA.takeDirtyRound(spec, 4)).rejects.toThrow(/not started/);
  });

  it('refuses to retire a running instance, and rejects bad input before touching anything', async () => {
    await expect(drvA.retire(spec)).rejects.toBeInstanceOf(FerryError);
    expect(await drvA.state(spec)).toBe('running');
    expect(existsSync(spec.disks[0]!.path)).toBe(true);
    await expect(drvA.start({ ...spec, id: '../etc' })).rejects.toThrow(/bad instance id/);
    await expect(drvB.migrateMemory(spec, 'exec:rm -rf /', { downtimeMs: 100, destinationDisks: drvB.destinationDisks(spec) })).rejects.toThrow(/bad memory URI/);
    await stopQemu(drvA.paths(spec), 0);
    expect(await drvA.state(spec)).toBe('absent');
  });
});

describe('qemu driver: migration between the two lab nodes', () => {
  it('moves a running guest: counter continues, disks identical at switchover, source retired', async () => {
    const spec = guestSpec('qd-mig');
    await drvA.start(spec);
    await waitForStat(A.mgmtAddress, spec.servicePort!);
    await drvA.checkMigratable(spec);
    await drvB.checkMigratable(spec);

    await drvA.startDirtyTracking(spec);
    const { memoryUri } = await drvB.prepareDestination(spec, { listenHost: B.dataAddress });
    expect(memoryUri).toMatch(/^tcp:10\.213\.9\.2:\d+$/);
    await rm(drvB.paths(spec).memoryUri); // as if the worker died before saving the URI
    expect(await drvB.prepareDestination(spec, { listenHost: B.dataAddress })).toEqual({ memoryUri });
    expect(await drvB.prepareDestination(spec, { listenHost: B.dataAddress })).toEqual({ memoryUri });
    expect(await drvB.state(spec)).toBe('incoming');

    await copyExtents(drvA, drvB, spec, [{ offset: 0, length: totalDiskBytes(spec) }]);
    for (let r = 1; r <= 2; r++) {
      await sleep(1000);
      await copyExtents(drvA, drvB, spec, await takeRound(drvA, spec, r));
    }
    const beforeMove = await stat(A.mgmtAddress, spec.servicePort!);

    const progress: string[] = [];
    await drvA.migrateMemory(spec, memoryUri, { downtimeMs: 300, destinationDisks: drvB.destinationDisks(spec), onProgress: (p) => progress.push(p.status) });
    expect(await drvA.state(spec)).toBe('paused');
    await copyExtents(drvA, drvB, spec, await takeRound(drvA, spec, 3));
    await drvA.stopDirtyTracking(spec);

    // Both paused: the destination disk must be byte-identical to the source's.
    expect(await sha256(destinationPath(drvB, spec))).toBe(await sha256(spec.disks[0]!.path));

    // A node worker restarted here: a fresh driver finds the QEMU again through the state dir.
    const restartedA = createQemuDriver({ stateDir: drvA.stateDir, netns: A.netns });
    const result = await restartedA.switchover(spec);
    expect(result.transferredBytes).toBeGreaterThan(0);
    expect(result.totalMs).toBeGreaterThan(0);
    console.log(`memory migration: total ${result.totalMs} ms, downtime ${result.downtimeMs} ms, ${result.transferredBytes} bytes`);
    await drvB.resume(spec);
    await drvB.resume(spec); // idempotent
    expect(await drvB.state(spec)).toBe('running');

    const after = await waitForStat(B.mgmtAddress, spec.servicePort!);
    expect(after.counter).toBeGreaterThanOrEqual(beforeMove.counter); // continued, not reset
    expect(after.uptime).toBeGreaterThanOrEqual(beforeMove.uptime); // same boot
    expect(after.seq).toBeGreaterThanOrEqual(beforeMove.seq);
    await sleep(1500);
    const later = await stat(B.mgmtAddress, spec.servicePort!);
    expect(later.counter).toBeGreaterThan(after.counter);
    expect(later.seq).toBeGreaterThan(after.seq); // still writing its (migrated) disk

    expect(await drvA.state(spec)).toBe('paused');
    await drvA.retire(spec);
    await drvA.retire(spec); // idempotent
    expect(await drvA.state(spec)).toBe('absent');
    expect(existsSync(spec.disks[0]!.path)).toBe(false);
    expect(existsSync(drvA.paths(spec).dir)).toBe(false);
  });

  it('a cancel before the switchover leaves the source running and the destination removable', async () => {
    const spec = guestSpec('qd-cancel');
    await drvA.start(spec);
    await waitForStat(A.mgmtAddress, spec.servicePort!);
    await drvA.startDirtyTracking(spec);
    const { memoryUri } = await drvB.prepareDestination(spec, { listenHost: B.dataAddress });
    await drvA.migrateMemory(spec, memoryUri, { downtimeMs: 300, destinationDisks: drvB.destinationDisks(spec) });
    expect(await drvA.state(spec)).toBe('paused');

    await drvA.cancelMigration(spec);
    await drvA.cancelMigration(spec); // idempotent
    expect(await drvA.state(spec)).toBe('running');
    const s1 = await stat(A.mgmtAddress, spec.servicePort!);
    await sleep(1500);
    const s2 = await stat(A.mgmtAddress, spec.servicePort!);
    expect(s2.counter).toBeGreaterThan(s1.counter);

    await drvA.stopDirtyTracking(spec);
    await drvB.abortDestination(spec);
    await drvB.abortDestination(spec); // idempotent
    expect(await drvB.state(spec)).toBe('absent');
    expect(existsSync(destinationPath(drvB, spec))).toBe(false);
    expect(existsSync(spec.disks[0]!.path)).toBe(true);
  });

  it('native baseline (blockdev-mirror + migrate) moves a guest with its disk', async () => {
    const spec = guestSpec('qd-native', {}, 10);
    await drvA.start(spec);
    const before = await waitForStat(A.mgmtAddress, spec.servicePort!);
    const phases = new Set<string>();
    const res = await migrateNative({
      spec,
      source: { stateDir: drvA.stateDir, netns: A.netns },
      dest: { stateDir: drvB.stateDir, netns: B.netns },
      destHost: B.dataAddress,
      downtimeMs: 300,
      onProgress: (p) => phases.add(p.phase),
    });
    console.log(`native: ${JSON.stringify(res)}`);
    expect([...phases]).toEqual(['disk', 'memory']);
    expect(await drvA.state(spec)).toBe('absent');
    expect(existsSync(spec.disks[0]!.path)).toBe(false);
    const after = await waitForStat(B.mgmtAddress, spec.servicePort!);
    expect(after.counter).toBeGreaterThanOrEqual(before.counter);
    expect(after.uptime).toBeGreaterThanOrEqual(before.uptime);

    // Every durable record, from before and after the move, is on the destination disk.
    const q = await guestRequest(B.mgmtAddress, spec.servicePort!, 'quiesce');
    const last = Number(/^quiesced seq=(\d+)$/.exec(q)?.[1] ?? NaN);
    expect(last).toBeGreaterThan(before.seq);
    const fh = await open(destinationPath(drvB, spec), 'r');
    try {
      for (let n = 1; n <= last; n++) {
        const buf = Buffer.alloc(64);
        await fh.read(buf, 0, 64, MiB + n * 4096);
        expect(buf.toString('latin1')).toMatch(new RegExp(`^ferry-record seq=${n} counter=\\d+\n`));
      }
    } finally {
      await fh.close();
    }
    await stopQemu(drvB.paths(spec), 0);
  });
});
