// Two real Xen hosts under QEMU TCG joined by a -netdev socket link. A migration to an unprepared
// destination is refused and leaves the guest running on the source with nothing left there; then a real migration
// with the driver's phases and a driver-level disk copy (bulk, one dirty round, final sync while
// both sides are stopped) moves the guest: running only on the destination, counter continued,
// its records intact. Takes many minutes (two TCG hosts on a shared 2-core machine).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startXenLab, type XenLab } from '../../src/labs/xen/xen-lab.js';
import { createXenDriver, type XenDriver } from '../../src/drivers/xen/xen-driver.js';
import type { Executor } from '../../src/drivers/xen/executor.js';
import type { BlockSource } from '../../src/dataplane/types.js';
import type { Extent } from '../../src/shared/extents.js';
import { FerryError } from '../../src/shared/errors.js';
import { STATE_DIR, guestStat, recordOffset, waitGuest, xenGuestSpec } from './xen-guest.js';

let lab: XenLab;
let a: XenDriver;
let b: XenDriver;
const timings: Record<string, number> = {};

/** The test's stand-in for the data plane: extents from a BlockSource into a file on the other host. */
async function copyExtents(src: BlockSource, dest: Executor, path: string, extents: Extent[]): Promise<number> {
  const f = await dest.openFile(path, 'r+');
  let n = 0;
  try {
    for (const e of extents) {
      for (let off = e.offset; off < e.offset + e.length; off += 1024 * 1024) {
        const len = Math.min(1024 * 1024, e.offset + e.length - off);
        const buf = await src.read(off, len);
        await f.write(off, buf);
        n += buf.length;
      }
    }
  } finally {
    await f.close();
  }
  return n;
}

async function sha(ex: Executor, path: string): Promise<string> {
  const r = await ex.run('sha256sum', [path]);
  return r.stdout.split(/\s+/)[0];
}

beforeAll(async () => {
  const t0 = Date.now();
  lab = await startXenLab({ hosts: 2, log: (l) => console.log(l) });
  timings.labBootMs = Date.now() - t0;
  a = createXenDriver({ executor: lab.hosts[0].ssh, stateDir: STATE_DIR });
  b = createXenDriver({ executor: lab.hosts[1].ssh, stateDir: STATE_DIR });
}, 1_800_000);

afterAll(async () => {
  console.log('xen-migrate timings', JSON.stringify({ ...timings, bootMs: lab?.bootMs }));
  await lab?.stop();
}, 60_000);

describe('xl migrate between two Xen hosts', () => {
  const spec = xenGuestSpec('g1');
  const [ha, hb] = [() => lab.hosts[0], () => lab.hosts[1]];

  it('a refused migration rolls back: guest still runs on the source, nothing left on the destination', async () => {
    await a.start(spec);
    await waitGuest(ha().ssh, 300_000);
    await a.checkMigratable(spec);
    // The destination was never prepared: its era device is missing. xl would hand the guest over
    // anyway (measured), so the driver checks the peer first and refuses.
    const t0 = Date.now();
    const err = await a.migrateMemory(spec, `xl-ssh:${hb().linkAddress}`, { downtimeMs: 500 }).catch((e: unknown) => e);
    timings.refusedMigrateMs = Date.now() - t0;
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).type).toBe('MigrationRefused');
    expect((err as FerryError).message).toMatch(/has no \/dev\/mapper\/ferry-g1/);
    expect(await a.state(spec)).toBe('running');
    expect(await b.state(spec)).toBe('absent');
    expect((await hb().ssh.run('xl', ['list'])).stdout).not.toMatch(/g1/);
    const before = await guestStat(ha().ssh);
    await new Promise((r) => setTimeout(r, 1500));
    expect((await guestStat(ha().ssh)).counter).toBeGreaterThan(before.counter);
  }, 900_000);

  it('moves the running guest with its disk; it runs only on the destination, counter continued', async () => {
    const dest = b.destinationDiskPath(spec);
    const { memoryUri } = await b.prepareDestination(spec, { listenHost: hb().linkAddress });
    expect(memoryUri).toBe(`xl-ssh:${hb().linkAddress}`);

    await a.startDirtyTracking(spec);
    let t = Date.now();
    const srcDisk = await a.openDisk(spec);
    timings.bulkBytes = await copyExtents(srcDisk, hb().ssh, dest, [{ offset: 0, length: spec.diskBytes }]);
    timings.bulkMs = Date.now() - t;
    const round1 = await a.takeDirtyRound(spec, 1);
    timings.round1Bytes = await copyExtents(srcDisk, hb().ssh, dest, round1);
    expect(round1.length).toBeGreaterThan(0);

    const beforeMove = await guestStat(ha().ssh);
    t = Date.now();
    await a.migrateMemory(spec, memoryUri, { downtimeMs: 500 });
    timings.xlMigrateMs = Date.now() - t;
    // Xen: the source domain is gone, the destination paused and waiting for the final sync.
    expect(await a.state(spec)).toBe('absent');
    expect(await b.state(spec)).toBe('paused');

    t = Date.now();
    const final = await a.takeDirtyRound(spec, 2);
    timings.finalBytes = await copyExtents(srcDisk, hb().ssh, dest, final);
    await srcDisk.close();
    timings.finalSyncMs = Date.now() - t;
    // Both disks identical before the destination runs a single instruction.
    expect(await sha(hb().ssh, dest)).toBe(await sha(ha().ssh, spec.diskPath));

    const mem = await a.switchover(spec);
    expect(mem.totalMs).toBeGreaterThan(0);
    await b.resume({ ...spec, diskPath: dest });
    timings.pausedToRunningMs = Date.now() - t;
    expect(await b.state(spec)).toBe('running');

    const after = await waitGuest(hb().ssh, 120_000);
    // Memory moved, not rebooted: the counter went on from where it was, and the records too.
    expect(after.counter).toBeGreaterThanOrEqual(beforeMove.counter);
    expect(after.seq).toBeGreaterThanOrEqual(beforeMove.seq);
    await new Promise((r) => setTimeout(r, 2000));
    const later = await guestStat(hb().ssh);
    expect(later.counter).toBeGreaterThan(after.counter);
    expect(later.seq).toBeGreaterThan(after.seq);
    // Every durable record on the destination disk is intact and in order.
    const disk = await b.openDisk({ ...spec, diskPath: dest });
    for (let n = 1; n <= after.seq; n += Math.max(1, Math.floor(after.seq / 20))) {
      const rec = (await disk.read(recordOffset(spec, n), 64)).toString('latin1');
      expect(rec).toMatch(new RegExp(`^ferry-record seq=${n} `));
    }
    await disk.close();

    await a.stopDirtyTracking(spec);
    await a.retire(spec);
    expect((await ha().ssh.run('xl', ['list'])).stdout).not.toMatch(/g1/);
    expect((await ha().ssh.run('dmsetup', ['ls'])).stdout).not.toMatch(/ferry-g1/);
    expect((await ha().ssh.run('test', ['-e', spec.diskPath])).code).not.toBe(0);
  }, 1_800_000);
});
