// Xen end to end: the whole of Ferry (Temporal workflow, controller and node workers, the TLS data
// plane, SQLite inventory, the CLI) on two real Xen 4.17 hosts under QEMU TCG, reached over SSH
// with pinned host keys, moving a guest made the way an operator makes one: an LV in the host's
// volume group and an image file, an xl config file in /etc/xen, `xl create`. Ferry learns of it
// from `ferry node sync`. The assertions are the user's: the guest runs on exactly one host, its
// counter never went back, every fsync'ed record is on both disks, the disks are byte-identical,
// the inventory adds up, nothing is left behind, and a rollback leaves the LV's device-mapper
// table as it was. One lab for the whole file: booting two Xen hosts takes minutes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { NativeConnection, Worker } from '@temporalio/worker';
import { WorkflowFailedError } from '@temporalio/client';
import { XEN_LAB_DOWNTIME, startXenMigrationLab, type XenMigrationLab } from '../../src/labs/xen/xen-migration-lab.js';
import { LINK_CUTTER_PATH, installLinkCutter } from '../../src/labs/xen/link-cutter.js';
import { LAB_VG, XEN_STATE_DIR, labDiskPath, labMac, recordOffset, type LabDisk } from '../../src/labs/xen/lab-guest.js';
import { DOM0_GUEST_KERNEL } from '../../src/labs/xen/xen-lab.js';
import { startProber, stat, quiesce, type GuestStat } from '../../src/labs/guest-client.js';
import { createXenDriver } from '../../src/drivers/xen/xen-driver.js';
import type { Executor } from '../../src/drivers/xen/executor.js';
import { createNodeActivities } from '../../src/activities/node.js';
import { createLogger, parseDuration } from '../../src/config/index.js';
import { taskQueueForNode } from '../../src/shared/names.js';
import type { MigrationResult } from '../../src/shared/messages.js';
import { result, startMigration, timedSetup, waitFor } from './helpers.js';
import { proceedSignal } from '../../src/shared/messages.js';

const MiB = 1024 * 1024;
/** xl's state flags r b p s c d: running or blocked, and not paused, shut down, crashed or dying. */
const RUNNING_FLAGS = '[r-][b-]-{4}';
/**
 * x1: its root disk an LV with a file system, a data disk an image file; it writes 2 records a
 * second to both, room for 2047 each (17 minutes: the whole file).
 */
const X1_DISKS: LabDisk[] = [
  { vdev: 'xvda', kind: 'lv', bytes: 32 * MiB },
  { vdev: 'xvdb', kind: 'file', bytes: 32 * MiB },
];
const X1_DISK_BYTES = 64 * MiB;
const X1_LV = labDiskPath('x1', X1_DISKS[0]!);
const X1_FILE = labDiskPath('x1', X1_DISKS[1]!);
let lab: XenMigrationLab;
const timings: Record<string, number> = {};

async function addr(node: string) {
  return (await lab.serviceAddresses()).find((a) => a.node === node)!;
}

async function answersOn(node: string): Promise<GuestStat | null> {
  const a = await addr(node);
  return stat(a.host, a.port).catch(() => null);
}

async function waitAnswer(node: string, ms = 300_000): Promise<GuestStat> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await answersOn(node);
    if (s) return s;
    if (Date.now() > deadline) throw new Error(`guest never answered on ${node}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Domains named after the instance on a host, with xl's state flags. */
async function domainsOn(node: string, id: string): Promise<string[]> {
  const out = (await lab.host(node).ssh.run('xl', ['list'])).stdout;
  return out
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[0] === id || f[0]?.startsWith(`${id}--`))
    .map((f) => `${f[0]} ${f[4]}`);
}

/** The LV's live device-mapper table on a host (what a rollback must leave as it was). */
async function lvTable(node: string, lvPath: string): Promise<string> {
  const h = lab.host(node).ssh;
  const dm = (await h.run('lvs', ['--noheadings', '-o', 'lv_dm_path', lvPath])).stdout.trim();
  const r = await h.run('dmsetup', ['table', dm]);
  expect(r.code, `dmsetup table ${dm}`).toBe(0);
  return r.stdout.trim();
}

const usage = (node: string) => lab.inventory.freeCapacity(node);

async function expectOnlyOn(id: string, node: string, other: string) {
  const here = await domainsOn(node, id);
  expect(here, `${id} runs on ${node}`).toHaveLength(1);
  expect(here[0], 'running (xl flags r or b, not paused)').toMatch(new RegExp(`^${id} ${RUNNING_FLAGS}`));
  expect(await domainsOn(other, id), `nothing of ${id} on ${other}`).toEqual([]);
  expect(lab.inventory.getInstance(id).host).toBe(node);
  expect(lab.inventory.listReservations({ live: true })).toEqual([]);
  expect(lab.inventory.checkConsistency()).toEqual([]);
}

/** Every record up to `lastSeq` on each of the guest's disks on `node`; returns the missing ones. */
async function missingRecords(node: string, disks: LabDisk[], lastSeq: number): Promise<Record<string, number[]>> {
  const out: Record<string, number[]> = {};
  for (const d of disks) {
    const f = await lab.host(node).ssh.openFile(labDiskPath('x1', d), 'r');
    out[d.vdev] = [];
    try {
      for (let n = 1; n <= lastSeq; n++) {
        const rec = (await f.read(recordOffset(d.bytes, n), 64)).toString('latin1');
        if (!rec.startsWith(`ferry-record seq=${n} `)) out[d.vdev]!.push(n);
      }
    } finally {
      await f.close();
    }
  }
  return out;
}

beforeAll(async () => {
  await timedSetup('xen e2e setup', 1_500_000, async (step) => {
    const t0 = Date.now();
    step('Temporal, inventory and two Xen hosts');
    lab = await startXenMigrationLab({ dir: '/var/tmp/ferry-xen-e2e', log: (l) => console.log(l) });
    step('controller and node workers');
    await lab.startWorkers();
    timings.labMs = Date.now() - t0;
    step('x1 on xa: lvcreate, an image file, /etc/xen/x1.cfg, xl create');
    await lab.createGuest({ id: 'x1', node: 'xa', memoryMiB: 128, rate: 2, disks: X1_DISKS, contentDir: '/usr/share/zoneinfo' });
    step('x1 answering');
    await waitAnswer('xa');
    timings.guestBootMs = Date.now() - t0 - timings.labMs;
    step('ready');
  });
}, 1_800_000);

afterAll(async () => {
  console.log('xen e2e timings', JSON.stringify({ ...timings, bootMs: lab?.xen.bootMs }));
  await lab?.close();
}, 120_000);

describe('Xen end to end: an operator\'s guest (xl create, an LV and an image file)', () => {
  it('`ferry node sync` imports it from what xl says: both disks with kind and size, its MAC; again, it updates, never duplicates', async () => {
    const r = await lab.sync('xa');
    expect(r.added).toEqual(['x1']);
    expect(r.refused).toEqual([]);
    const spec = lab.inventory.getInstance('x1').spec;
    expect(spec.startedBy).toBe('xl create');
    expect(spec.guestType).toBe('pvh');
    expect(spec.memoryMiB).toBe(128);
    expect(spec.vcpus).toBe(1);
    expect(spec.disks).toEqual([
      { vdev: 'xvda', kind: 'lv', path: X1_LV, format: 'raw', bytes: 32 * MiB },
      { vdev: 'xvdb', kind: 'file', path: X1_FILE, format: 'raw', bytes: 32 * MiB },
    ]);
    expect(spec.nics).toEqual([{ mac: labMac('x1'), bridge: 'xenbr0' }]);
    const again = await lab.sync('xa');
    expect(again.unchanged).toEqual(['x1']);
    expect(again.added).toEqual([]);
    expect(lab.inventory.listInstances({ host: 'xa' }).map((i) => i.id)).toEqual(['x1']);
    expect(usage('xa').diskBytes).toBe(lab.inventory.getNode('xa').capacity.diskBytes - X1_DISK_BYTES);
  }, 300_000);

  it('a cancel during the bulk copy: the guest runs on from its own LV and file, the LV\'s table is what it was, nothing on the destination', async () => {
    const t0 = Date.now();
    const before = { a: usage('xa'), b: usage('xb'), table: await lvTable('xa', X1_LV) };
    expect(before.table).toMatch(/^0 65536 linear /);
    const h = await startMigration(lab, { instanceId: 'x1', destination: 'xb' });
    await waitFor(h, (p) => p.phase === 'bulk-copy' && p.bytesDone > 0, 600_000);
    // While it copies, the LV runs under era: the tracking is really there.
    expect(await lvTable('xa', X1_LV)).toMatch(/ era /);
    const c = await lab.ferry(['cancel', 'x1', '--reason', 'e2e: cancel during the bulk copy']);
    expect(c.code, c.stderr).toBe(0);
    const r = (await result(h)) as MigrationResult;
    expect(r.outcome).toBe('rolled-back');
    await expectOnlyOn('x1', 'xa', 'xb');
    expect(await lvTable('xa', X1_LV), 'dmsetup table of the LV is the original again').toBe(before.table);
    expect(await lab.leftovers('x1', X1_DISKS, 'xb'), 'the destination holds nothing').toEqual([]);
    const src = await lab.leftovers('x1', X1_DISKS, 'xa');
    expect(src, 'the source holds the guest and its disks, and no tracking state').toEqual(['domain x1', X1_LV, X1_FILE]);
    expect((await lab.host('xa').ssh.run('losetup', ['-j', X1_FILE])).stdout, "xl's loop device still serves the file").toMatch(/^\/dev\/loop\d+:/);
    expect(usage('xa')).toEqual(before.a);
    expect(usage('xb')).toEqual(before.b);
    const s1 = await waitAnswer('xa', 60_000);
    await new Promise((res) => setTimeout(res, 2000));
    expect((await waitAnswer('xa', 60_000)).counter, 'the guest kept counting on the source').toBeGreaterThan(s1.counter);
    timings.cancelMs = Date.now() - t0;
  }, 1_800_000);

  it('a disk Ferry cannot track (the LV now has a snapshot) is refused before any side effect, with the reason', async () => {
    const xa = lab.host('xa').ssh;
    const snap = await xa.run('lvcreate', ['--yes', '--snapshot', '--name', 'x1-snap', '--size', '8m', `${LAB_VG}/x1-xvda`]);
    expect(snap.code, snap.stderr).toBe(0);
    try {
      const table = await lvTable('xa', X1_LV);
      const m = await lab.ferry(['migrate', 'x1', '--to', 'xb', '--json']);
      expect(m.code).not.toBe(0);
      const out = JSON.parse(m.stdout.trim().split('\n').pop()!) as { outcome: string; type?: string; error: string };
      expect(out.outcome).toBe('failed');
      expect(out.type).toBe('CannotTrack');
      expect(out.error).toMatch(/xvda.*snapshot.*linear LVs/s);
      expect(await lvTable('xa', X1_LV), 'nothing touched the LV').toBe(table);
      expect(await lab.leftovers('x1', X1_DISKS, 'xb')).toEqual([]);
      expect(lab.inventory.listReservations({ live: true })).toEqual([]);
      await expectOnlyOn('x1', 'xa', 'xb');
      const sync = await lab.sync('xa');
      expect(sync.refused.map((x) => x.name)).toEqual(['x1']);
      expect(sync.refused[0]!.reason).toMatch(/origin of a snapshot/);
    } finally {
      await xa.run('lvremove', ['--yes', `${LAB_VG}/x1-snap`]);
    }
  }, 600_000);

  it('a destination that refuses xl migrate rolls back: guest on the source, its LV table restored, nothing on the destination', async () => {
    const t0 = Date.now();
    const before = { a: usage('xa'), b: usage('xb'), table: await lvTable('xa', X1_LV) };
    const h = await startMigration(lab, { instanceId: 'x1', destination: 'xb', options: { holdAfter: ['dirty-rounds'] } });
    await waitFor(h, (p) => p.heldAfter === 'dirty-rounds', 600_000);
    // Between the checks and the memory phase, something else takes the destination's memory: its
    // `xl migrate-receive` cannot build the domain, and xl resumes the guest at the sender.
    const xb = lab.host('xb').ssh;
    const freeMiB = Number(/^free_memory\s*:\s*(\d+)/m.exec((await xb.run('xl', ['info'])).stdout)?.[1]);
    expect(freeMiB).toBeGreaterThan(128);
    await xb.writeFile('/tmp/hog.cfg', `name = "hog"\ntype = "pvh"\nmemory = ${freeMiB - 48}\nkernel = "${DOM0_GUEST_KERNEL}"\n`);
    const hog = await xb.run('xl', ['create', '-p', '/tmp/hog.cfg']);
    expect(hog.code, hog.stderr).toBe(0);
    let err: unknown;
    try {
      await h.signal(proceedSignal, 'dirty-rounds');
      err = await result(h).catch((e: unknown) => e);
    } finally {
      await xb.run('xl', ['destroy', 'hog']);
    }
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(String(((err as WorkflowFailedError).cause?.cause as Error | undefined)?.message ?? '')).toMatch(/resumed here/);
    await expectOnlyOn('x1', 'xa', 'xb');
    expect(await lvTable('xa', X1_LV)).toBe(before.table);
    expect(await lab.leftovers('x1', X1_DISKS, 'xb'), 'the destination holds nothing').toEqual([]);
    expect(await lab.leftovers('x1', X1_DISKS, 'xa')).toEqual(['domain x1', X1_LV, X1_FILE]);
    expect(usage('xa')).toEqual(before.a);
    expect(usage('xb')).toEqual(before.b);
    const s1 = await waitAnswer('xa', 60_000);
    await new Promise((r) => setTimeout(r, 2000));
    expect((await waitAnswer('xa', 60_000)).counter, 'the guest kept counting on the source').toBeGreaterThan(s1.counter);
    timings.refusedMs = Date.now() - t0;
  }, 1_800_000);

  it('`ferry migrate` moves it while it writes: only on the destination, counter continued, every record on both disks, disks identical, MAC kept, source LV and file gone', async () => {
    const t0 = Date.now();
    const before = { a: usage('xa'), b: usage('xb') };
    const prober = startProber(await lab.serviceAddresses(), 500);
    await new Promise((r) => setTimeout(r, 2000));
    const m = await lab.ferry(['migrate', 'x1', '--to', 'xb', '--verify', '--json']);
    await new Promise((res) => setTimeout(res, 3000));
    const probe = await prober.stop();
    expect(m.code, m.stderr).toBe(0);
    const r = JSON.parse(m.stdout.trim().split('\n').pop()!) as MigrationResult;
    timings.migrateMs = Date.now() - t0;
    timings.workflowMs = r.totalMs;
    timings.downtimeMs = r.downtimeMs;
    timings.clientGapMs = probe.longestGapMs;
    console.log('xen migration result', JSON.stringify({ ...r, timeline: undefined }), JSON.stringify(probe));

    expect(r.outcome).toBe('migrated');
    // The CLI's run took the lab controller's config default for the budget.
    expect(r.options?.downtimeMs).toBe(parseDuration(XEN_LAB_DOWNTIME));
    expect(r.disksIdentical, 'SHA-256 of each disk on both hosts, source stopped, destination not yet running').toEqual({ xvda: true, xvdb: true });
    expect(probe.counterReset, 'the in-memory counter never went back').toBe(false);
    const after = await waitAnswer('xb', 120_000);
    expect(after.counter, 'memory moved, not rebooted').toBeGreaterThan(probe.firstCounter ?? Infinity);
    await expectOnlyOn('x1', 'xb', 'xa');
    expect(await answersOn('xa')).toBeNull();
    expect(await lab.leftovers('x1', X1_DISKS, 'xa'), 'source LV, file, loop, tracking: all gone').toEqual([]);
    expect(await lab.leftovers('x1', X1_DISKS, 'xb'), 'the destination holds the guest and its two disks, and nothing of Ferry').toEqual(['domain x1', X1_LV, X1_FILE]);
    expect(await lvTable('xb', X1_LV), "the destination LV's table is plain").toMatch(/^0 65536 linear /);
    expect((await lab.host('xb').ssh.run('xl', ['network-list', 'x1'])).stdout, 'MAC unchanged').toContain(labMac('x1'));

    const moved = lab.inventory.getInstance('x1');
    expect(moved.spec.disks.map((d) => d.path)).toEqual([X1_LV, X1_FILE]);
    expect(usage('xa').memoryMiB).toBe(before.a.memoryMiB + 128);
    expect(usage('xa').diskBytes).toBe(before.a.diskBytes + X1_DISK_BYTES);
    expect(usage('xb').memoryMiB).toBe(before.b.memoryMiB - 128);
    expect(usage('xb').diskBytes).toBe(before.b.diskBytes - X1_DISK_BYTES);

    // Every record the guest made durable is on both destination disks.
    const a = await addr('xb');
    const lastSeq = await quiesce(a.host, a.port);
    expect(lastSeq).toBeGreaterThan(0);
    expect(await missingRecords('xb', X1_DISKS, lastSeq), 'durable records missing on the destination').toEqual({ xvda: [], xvdb: [] });
  }, 1_800_000);

  it('a link that dies after xl hands over leaves xl undefined: Ferry finds the guest on the destination and settles there', async () => {
    // The guest stopped writing records (quiesced) but still counts.
    const t0 = Date.now();
    const xb = lab.host('xb');
    await installLinkCutter(xb.ssh);
    await lab.stopWorker('xb');
    await lab.startNodeWorker('xb', { migrateSshCommand: ['perl', LINK_CUTTER_PATH, 'ssh'] });
    const s0 = await waitAnswer('xb', 60_000);
    const h = await startMigration(lab, { instanceId: 'x1', destination: 'xa', options: { verify: true } });
    const r = await result(h);
    timings.undefinedMs = Date.now() - t0;
    expect(r.outcome).toBe('migrated');
    expect(r.diskIdentical).toBe(true);
    const notes = r.timeline.map((e) => e.detail ?? '').join('\n');
    expect(notes, 'xl reported an undefined state and Ferry looked at both hosts').toMatch(/undefined.*destination holds x1/s);
    await expectOnlyOn('x1', 'xa', 'xb');
    expect(await lab.leftovers('x1', X1_DISKS, 'xb'), 'the old source is clean (its --migratedaway domain too)').toEqual([]);
    const s1 = await waitAnswer('xa', 120_000);
    expect(s1.counter).toBeGreaterThan(s0.counter);
    await lab.stopWorker('xb');
    await lab.startNodeWorker('xb');
  }, 1_800_000);

  it('refuses to live-migrate a PV guest where Xen has no shadow paging, before any side effect (FAKE: xl info edited, this Xen has shadow paging)', async () => {
    const t0 = Date.now();
    const p1Disks: LabDisk[] = [{ vdev: 'xvda', kind: 'file', bytes: 16 * MiB }];
    await lab.createGuest({ id: 'p1', node: 'xa', type: 'pv', memoryMiB: 128, rate: 0, disks: p1Disks });
    const deadline = Date.now() + 300_000;
    while (!(await domainsOn('xa', 'p1')).some((d) => new RegExp(`^p1 ${RUNNING_FLAGS}`).test(d))) {
      if (Date.now() > deadline) throw new Error('p1 did not start');
      await new Promise((r) => setTimeout(r, 1000));
    }
    expect((await lab.sync('xa')).added).toEqual(['p1']);
    const before = { a: usage('xa'), b: usage('xb') };
    // The node worker of xa, in this process, sees `xl info` without "shadow" in virt_caps.
    await lab.stopWorker('xa');
    const connection = await NativeConnection.connect({ address: lab.temporal.address });
    const xa = lab.host('xa');
    const worker = await Worker.create({
      connection,
      namespace: 'default',
      taskQueue: taskQueueForNode('xa'),
      activities: createNodeActivities({
        nodeName: 'xa',
        driver: createXenDriver({ executor: withoutShadowPaging(xa.ssh), stateDir: XEN_STATE_DIR, migrationAddress: xa.linkAddress }),
        dataAddress: '127.0.0.1',
        stateDir: join(lab.dir, 'nodes', 'xa'),
        log: createLogger('test-xa-no-shadow'),
      }),
    });
    const running = worker.run();
    try {
      const h = await startMigration(lab, { instanceId: 'p1', destination: 'xb' });
      const err = await result(h).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const cause = (err as WorkflowFailedError).cause?.cause as { type?: string; message?: string } | undefined;
      expect(cause?.type).toBe('PvNeedsShadowPaging');
      expect(cause?.message).toMatch(/PV guest.*shadow paging/s);
    } finally {
      worker.shutdown();
      await running;
      await connection.close();
    }
    expect(await domainsOn('xa', 'p1')).toHaveLength(1);
    expect(await domainsOn('xb', 'p1')).toEqual([]);
    expect(await lab.leftovers('p1', p1Disks, 'xb')).toEqual([]);
    expect(lab.inventory.getInstance('p1').host).toBe('xa');
    expect(usage('xa')).toEqual(before.a);
    expect(usage('xb')).toEqual(before.b);
    expect(lab.inventory.listReservations({ live: true })).toEqual([]);
    await lab.destroyGuest('p1', p1Disks);
    await lab.startNodeWorker('xa');
    timings.pvRefusalMs = Date.now() - t0;
  }, 1_800_000);
});

/** FAKE (the real thing cannot run here): Debian's Xen 4.17 has shadow paging, so hide it from `xl info`. */
function withoutShadowPaging(ex: Executor): Executor {
  return {
    where: ex.where,
    async run(cmd, args, opts) {
      const r = await ex.run(cmd, args, opts);
      if (cmd === 'xl' && args[0] === 'info') {
        r.stdout = r.stdout.replace(/^(virt_caps\s*:)(.*)$/m, (_l, k: string, v: string) => `${k}${v.replace(/\bshadow\b/g, '').replace(/\s+/g, ' ')}`);
      }
      return r;
    },
    openFile: (p, m) => ex.openFile(p, m),
    writeFile: (p, d) => ex.writeFile(p, d),
    readFile: (p) => ex.readFile(p),
    close: async () => undefined,
  };
}
