// One real Xen host (Xen 4.17 + Debian dom0 under QEMU TCG), reached over SSH, and the Xen driver
// against a guest made the way an operator makes one (an LV and an image file, /etc/xen/g1.cfg,
// `xl create`): the driver describes it from `xl list -l`, puts write tracking under both disks
// while it runs (era swapped in under the LV, blktrace on the file's loop device), sees its
// fsync'ed records in the dirty round of each disk, reads them back, and takes the tracking away
// again, the LV's table as it was. A PV guest is refused where Xen lacks shadow paging. Takes
// minutes (TCG).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startXenLab, type XenLab } from '../../src/labs/xen/xen-lab.js';
import { createXenDriver, type XenDriver } from '../../src/drivers/xen/xen-driver.js';
import { XEN_STATE_DIR, labDiskPath, labMac, operatorConfig, recordOffset, type LabDisk } from '../../src/labs/xen/lab-guest.js';
import { FerryError } from '../../src/shared/errors.js';
import type { InstanceSpec } from '../../src/shared/instance.js';
import { guestStat, waitGuest } from './xen-guest.js';

const MiB = 1024 * 1024;
const DISKS: LabDisk[] = [
  { vdev: 'xvda', kind: 'lv', bytes: 16 * MiB },
  { vdev: 'xvdb', kind: 'file', bytes: 8 * MiB },
];
let lab: XenLab;
let driver: XenDriver;
const timings: Record<string, number> = {};

const ssh = () => lab.hosts[0]!.ssh;
async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await ssh().run(cmd, args);
  expect(r.code, `${cmd} ${args.join(' ')}: ${r.stderr}`).toBe(0);
  return r.stdout;
}
const lvTable = async () => (await ok('dmsetup', ['table', 'guests-g1--xvda'])).trim();

beforeAll(async () => {
  const t0 = Date.now();
  lab = await startXenLab({ hosts: 1, log: (l) => console.log(l) });
  timings.labBootMs = Date.now() - t0;
  driver = createXenDriver({ executor: ssh(), stateDir: XEN_STATE_DIR });
}, 1_800_000);

afterAll(async () => {
  console.log('xen-host timings', JSON.stringify({ ...timings, bootMs: lab?.bootMs }));
  await lab?.stop();
}, 60_000);

describe('xen host', () => {
  it('answers xl list over ssh with Domain-0 and reports HVM support', async () => {
    const r = await ssh().run('xl', ['list']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Domain-0\s+0\s/m);
    const info = await ssh().run('xl', ['info']);
    expect(info.stdout).toMatch(/^virt_caps\s*:.*\bhvm\b/m);
  });

  it('probes shadow paging for a PV guest: refused without it, before any side effect; accepted with it', async () => {
    const info = await ssh().run('xl', ['info']);
    const hasShadow = /^virt_caps\s*:.*\bshadow\b/m.test(info.stdout);
    const spec: InstanceSpec = { id: 'pv1', hypervisor: 'xen', vcpus: 1, memoryMiB: 128, guestType: 'pv', disks: [{ vdev: 'xvda', kind: 'file', path: '/var/lib/xen/images/pv1.img', format: 'raw', bytes: MiB }] };
    const before = (await ssh().run('ls', ['-A', XEN_STATE_DIR])).stdout;
    if (hasShadow) {
      await expect(driver.checkMigratable(spec)).resolves.toBeUndefined();
      return;
    }
    const err = await driver.checkMigratable(spec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).type).toBe('PvNeedsShadowPaging');
    expect(await driver.state(spec)).toBe('absent');
    expect((await ssh().run('ls', ['-A', XEN_STATE_DIR])).stdout).toBe(before);
  });

  it("tracks writes under an xl-created guest's LV and image file while it runs, and takes the tracking away again", async () => {
    const t0 = Date.now();
    await ok('lvcreate', ['--yes', '--name', 'g1-xvda', '--size', `${DISKS[0]!.bytes}b`, 'guests']);
    await ok('truncate', ['-s', String(DISKS[1]!.bytes), labDiskPath('g1', DISKS[1]!)]);
    await ssh().writeFile('/etc/xen/g1.cfg', operatorConfig({ id: 'g1', disks: DISKS, rate: 5 }));
    await ok('xl', ['create', '/etc/xen/g1.cfg']);
    const first = await waitGuest(ssh(), 300_000);
    timings.guestAnswersMs = Date.now() - t0;

    const found = await driver.discover();
    expect(found.refused).toEqual([]);
    const spec = found.instances.find((i) => i.id === 'g1')!;
    expect(spec.disks).toEqual(DISKS.map((d) => ({ vdev: d.vdev, kind: d.kind, path: labDiskPath('g1', d), format: 'raw', bytes: d.bytes })));
    expect(spec.nics).toEqual([{ mac: labMac('g1'), bridge: 'xenbr0' }]);
    await driver.checkMigratable(spec);

    const original = await lvTable();
    expect(original).toMatch(/^0 32768 linear /);
    await driver.startDirtyTracking(spec);
    await driver.startDirtyTracking(spec); // idempotent
    expect(await lvTable()).toMatch(/^0 32768 era /);
    expect((await ssh().run('pgrep', ['-f', '^/usr/sbin/blktrace '])).code, 'blktrace runs').toBe(0);
    const seq0 = (await guestStat(ssh())).seq;
    await new Promise((r) => setTimeout(r, 4000));
    // Records durable before the round is taken must be in it, on both disks (later ones may land in round 2).
    const seq1 = (await guestStat(ssh())).seq;
    const round1 = await driver.takeDirtyRound(spec, 1);
    expect(seq1).toBeGreaterThan(seq0 + 1);
    for (const d of DISKS) {
      for (let n = seq0 + 1; n <= seq1; n++) {
        const off = recordOffset(d.bytes, n);
        expect(round1[d.vdev]!.some((e) => e.offset <= off && off + 4096 <= e.offset + e.length), `record ${n} of ${d.vdev} in round 1`).toBe(true);
      }
    }
    expect(await driver.takeDirtyRound(spec, 1), 'the same round again: the same frozen answer').toEqual(round1);
    // What the source reads is what the guest wrote, on both disks.
    for (const d of DISKS) {
      const src = await driver.openDisk(spec, d.vdev);
      const rec = await src.read(recordOffset(d.bytes, seq1), 4096);
      await src.close();
      expect(rec.toString('latin1'), d.vdev).toMatch(new RegExp(`^ferry-record seq=${seq1} `));
    }

    await driver.stopDirtyTracking(spec);
    await driver.stopDirtyTracking(spec); // idempotent
    expect(await lvTable(), "the LV's own table again").toBe(original);
    expect((await ok('dmsetup', ['ls'])).includes('ferry-g1'), 'no Ferry dm device left').toBe(false);
    expect((await ssh().run('pgrep', ['-f', '^/usr/sbin/blktrace '])).code, 'no blktrace left').not.toBe(0);
    expect((await ssh().run('test', ['-e', `${XEN_STATE_DIR}/g1`])).code, 'no state left').not.toBe(0);
    const later = await guestStat(ssh());
    expect(later.counter, 'the guest ran through it all').toBeGreaterThan(first.counter);
    expect(later.seq).toBeGreaterThan(seq1);
    await ok('xl', ['destroy', 'g1']);
    timings.trackingMs = Date.now() - t0;
  }, 900_000);
});
