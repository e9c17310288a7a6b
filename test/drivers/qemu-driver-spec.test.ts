// What the qemu driver accepts and where it puts disks, without a guest: the single-raw-disk rule,
// per-vdev calls, the destination's disks and free-space check, and retire's keepDisks. No lab,
// no QEMU process: every call here fails, or succeeds, before one would be needed.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createQemuDriver, MIGRATED_SUFFIX, type QemuDriver } from '../../src/drivers/qemu/qemu-driver.js';
import type { DiskSpec, InstanceSpec } from '../../src/shared/instance.js';
import { ErrorTypes, FerryError } from '../../src/shared/errors.js';

const MiB = 1024 * 1024;

let tmp = '';
let drv: QemuDriver;

function disk(over: Partial<DiskSpec> = {}): DiskSpec {
  return { vdev: 'vda', kind: 'file', path: join(tmp, 'src', 'g.raw'), format: 'raw', bytes: 8 * MiB, ...over };
}

function guest(id: string, disks: DiskSpec[] = [disk()]): InstanceSpec {
  return { id, hypervisor: 'qemu', vcpus: 1, memoryMiB: 128, disks, boot: { kernel: join(tmp, 'vmlinuz') }, startedBy: 'ferry' };
}

async function errorOf(p: Promise<unknown>): Promise<FerryError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (err instanceof FerryError) return err;
  throw new Error(`expected a FerryError, got ${err === undefined ? 'success' : String(err)}`);
}

beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ferry-qds-'));
  drv = createQemuDriver({ stateDir: join(tmp, 'state') });
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

describe('qemu driver: the guests it moves', () => {
  it('hands over paused before the switchover', () => {
    expect(drv.handover).toBe('pause-before-switchover');
  });

  it('refuses every guest but one with a single raw image file, before any side effect', async () => {
    const refused: [string, DiskSpec[]][] = [
      ['two disks', [disk(), disk({ vdev: 'vdb', path: join(tmp, 'src', 'g2.raw') })]],
      ['an LV', [disk({ kind: 'lv', path: '/dev/vg0/g' })]],
      ['qcow2', [disk({ format: 'qcow2' })]],
      ['no disk', []],
    ];
    for (const [what, disks] of refused) {
      const spec = guest('i-refused', disks);
      const e = await errorOf(drv.checkMigratable(spec));
      expect(e.type, what).toBe(ErrorTypes.BadInput);
      expect(e.message, what).toMatch(/the QEMU driver moves single-raw-disk guests/);
      expect(e.message, what).toContain('i-refused');
      expect((await errorOf(drv.checkDestination(spec))).type, what).toBe(ErrorTypes.BadInput);
      expect((await errorOf(drv.prepareDestination(spec, { listenHost: '127.0.0.1' }))).type, what).toBe(ErrorTypes.BadInput);
      expect((await errorOf(drv.start(spec))).type, what).toBe(ErrorTypes.BadInput);
      expect(() => drv.destinationDisks(spec), what).toThrow(/single-raw-disk/);
    }
    // Nothing was created for them: no disk, no disk folder, no instance folder.
    expect(existsSync(join(tmp, 'src'))).toBe(false);
    expect(existsSync(join(tmp, 'state'))).toBe(false);
  });

  it('refuses a per-disk call for a disk the guest does not have', async () => {
    const spec = guest('i-one');
    for (const call of [drv.openDisk(spec, 'vdb'), drv.openDestinationDisk(spec, 'vdb')]) {
      const e = await errorOf(call);
      expect(e.type).toBe(ErrorTypes.BadInput);
      expect(e.message).toMatch(/i-one has no disk "vdb"; its one disk is vda/);
    }
  });
});

describe('qemu driver: the destination', () => {
  it('puts the one disk in its disk folder, the rest of the disk as it was', () => {
    const spec = guest('i-dest', [disk({ vdev: 'vdz' })]);
    expect(drv.destinationDisks(spec)).toEqual([{ vdev: 'vdz', kind: 'file', path: join(tmp, 'state', 'disks', 'i-dest.raw'), format: 'raw', bytes: 8 * MiB }]);
    expect(spec.disks[0]!.path).toBe(join(tmp, 'src', 'g.raw')); // the source's spec is not changed
    const elsewhere = createQemuDriver({ stateDir: join(tmp, 'state'), diskDir: join(tmp, 'big') });
    expect(elsewhere.destinationDisks(spec)[0]!.path).toBe(join(tmp, 'big', 'i-dest.raw'));
  });

  it('checks for room where the disk will live, naming free, need and the folder', async () => {
    const dir = join(tmp, 'state', 'disks');
    await drv.checkDestination(guest('i-fits'));
    expect(existsSync(dir)).toBe(true); // created, so that its file system can be asked

    const need = 2 ** 52; // 4 PiB: more than any test machine has
    const e = await errorOf(drv.checkDestination(guest('i-huge', [disk({ bytes: need })])));
    expect(e.type).toBe(ErrorTypes.DestinationDiskFull);
    const m = /^(\d+) bytes free in (.+), the disk of i-huge needs (\d+)$/.exec(e.message);
    expect(m, e.message).not.toBeNull();
    expect(m![2]).toBe(dir);
    expect(Number(m![3])).toBe(need);
    const fs = statfsSync(dir);
    // What the file system says now, give or take what other processes write meanwhile.
    expect(Math.abs(Number(m![1]) - fs.bavail * fs.bsize)).toBeLessThan(256 * MiB);
  });
});

describe('qemu driver: retire', () => {
  function stoppedGuest(id: string): InstanceSpec {
    const spec = guest(id, [disk({ path: join(tmp, 'src', `${id}.raw`) })]);
    mkdirSync(join(tmp, 'src'), { recursive: true });
    writeFileSync(spec.disks[0]!.path, `disk of ${id}`);
    mkdirSync(drv.paths(spec).dir, { recursive: true }); // its state folder, QEMU already gone
    return spec;
  }

  it('with keepDisks, renames the source disk aside instead of deleting it; again, nothing changes', async () => {
    const spec = stoppedGuest('i-keep');
    const path = spec.disks[0]!.path;
    await drv.retire(spec, { keepDisks: true });
    expect(existsSync(path)).toBe(false);
    expect(readFileSync(`${path}${MIGRATED_SUFFIX}`, 'utf8')).toBe('disk of i-keep');
    expect(existsSync(drv.paths(spec).dir)).toBe(false);
    await drv.retire(spec, { keepDisks: true }); // a retried activity
    expect(readFileSync(`${path}.ferry-migrated`, 'utf8')).toBe('disk of i-keep');
  });

  it('without it, deletes the source disk', async () => {
    const spec = stoppedGuest('i-drop');
    await drv.retire(spec);
    expect(existsSync(spec.disks[0]!.path)).toBe(false);
    expect(existsSync(`${spec.disks[0]!.path}${MIGRATED_SUFFIX}`)).toBe(false);
    expect(existsSync(drv.paths(spec).dir)).toBe(false);
  });
});
