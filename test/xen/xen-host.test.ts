// One real Xen host (Xen 4.17 + Debian dom0 under QEMU TCG), reached over SSH: the host answers
// `xl list`, the driver boots a PVH lab guest on an era device and sees its disk writes in dirty
// rounds, and a PV guest is refused before anything is created. Takes minutes (TCG).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startXenLab, type XenLab } from '../../src/labs/xen/xen-lab.js';
import { createXenDriver, type XenDriver } from '../../src/drivers/xen/xen-driver.js';
import { dmPath } from '../../src/drivers/xen/era-tracking.js';
import { FerryError } from '../../src/shared/errors.js';
import { STATE_DIR, guestStat, recordOffset, waitGuest, xenGuestSpec } from './xen-guest.js';

let lab: XenLab;
let driver: XenDriver;
const timings: Record<string, number> = {};

beforeAll(async () => {
  const t0 = Date.now();
  lab = await startXenLab({ hosts: 1, log: (l) => console.log(l) });
  timings.labBootMs = Date.now() - t0;
  driver = createXenDriver({ executor: lab.hosts[0].ssh, stateDir: STATE_DIR });
}, 1_800_000);

afterAll(async () => {
  console.log('xen-host timings', JSON.stringify({ ...timings, bootMs: lab?.bootMs }));
  await lab?.stop();
}, 60_000);

describe('xen host', () => {
  it('answers xl list over ssh with Domain-0 and reports HVM support', async () => {
    const r = await lab.hosts[0].ssh.run('xl', ['list']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Domain-0\s+0\s/m);
    const info = await lab.hosts[0].ssh.run('xl', ['info']);
    expect(info.stdout).toMatch(/^virt_caps\s*:.*\bhvm\b/m);
    console.log('xl info caps:', info.stdout.split('\n').filter((l) => /caps/.test(l)).join(' | '));
  });

  it('probes shadow paging for a PV guest: refused without it, before any side effect; accepted with it', async () => {
    const ssh = lab.hosts[0].ssh;
    const info = await ssh.run('xl', ['info']);
    const hasShadow = /^virt_caps\s*:.*\bshadow\b/m.test(info.stdout);
    const spec = xenGuestSpec('pv1', { guestType: 'pv' });
    const before = (await ssh.run('ls', ['-A', STATE_DIR])).stdout;
    if (hasShadow) {
      await expect(driver.checkMigratable(spec)).resolves.toBeUndefined();
      return;
    }
    const err = await driver.checkMigratable(spec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FerryError);
    expect((err as FerryError).type).toBe('PvNeedsShadowPaging');
    expect((err as FerryError).message).toMatch(/shadow paging/);
    // Nothing created: no domain, no era device, no state.
    expect(await driver.state(spec)).toBe('absent');
    expect((await ssh.run('dmsetup', ['info', 'ferry-pv1'])).code).not.toBe(0);
    expect((await ssh.run('ls', ['-A', STATE_DIR])).stdout).toBe(before);
  });

  it('boots a PVH guest on an era device; its disk writes show up in dirty rounds', async () => {
    const ssh = lab.hosts[0].ssh;
    const spec = xenGuestSpec('g1');
    const t0 = Date.now();
    await driver.start(spec);
    timings.xlCreateMs = Date.now() - t0;
    expect(await driver.state(spec)).toBe('running');
    const first = await waitGuest(ssh, 300_000);
    timings.guestAnswersMs = Date.now() - t0;
    await driver.checkMigratable(spec);
    // Disk on the era device, as configured.
    const cfg = await ssh.run('xl', ['list', '-l', 'g1']);
    expect(cfg.stdout).toContain(dmPath('g1'));

    await driver.startDirtyTracking(spec);
    const seq0 = (await guestStat(ssh)).seq;
    await new Promise((r) => setTimeout(r, 3000));
    // Records durable before the round is taken must be in it (later ones may land in round 2).
    const seq1 = (await guestStat(ssh)).seq;
    const round1 = await driver.takeDirtyRound(spec, 1);
    expect(seq1).toBeGreaterThan(seq0 + 1);
    // Record n lives at recordOffset(spec, n).
    for (let n = seq0 + 2; n <= seq1; n++) {
      const off = recordOffset(spec, n);
      expect(round1.some((e) => e.offset <= off && off + 4096 <= e.offset + e.length)).toBe(true);
    }
    // Same round again: the same frozen answer (idempotent).
    expect(await driver.takeDirtyRound(spec, 1)).toEqual(round1);
    // The data the source reads is what the guest wrote.
    const src = await driver.openDisk(spec);
    const rec = await src.read(recordOffset(spec, seq0 + 1), 4096);
    await src.close();
    expect(rec.toString('latin1')).toMatch(new RegExp(`^ferry-record seq=${seq0 + 1} `));
    const later = await guestStat(ssh);
    expect(later.counter).toBeGreaterThan(first.counter);

    await driver.stopDirtyTracking(spec);
    await ssh.run('xl', ['destroy', 'g1']);
    await driver.retire(spec);
    expect(await driver.state(spec)).toBe('absent');
    expect((await ssh.run('dmsetup', ['info', 'ferry-g1'])).code).not.toBe(0);
    expect((await ssh.run('test', ['-e', spec.diskPath])).code).not.toBe(0);
  }, 900_000);
});
