// The parsers of xl's and era_invalidate's output, fed the exact text measured in the Xen lab.
import { describe, expect, it } from 'vitest';
import { parseEraInvalidate } from '../../src/drivers/xen/era-tracking.js';
import { parseXlList } from '../../src/drivers/xen/xen-driver.js';
import { FerryError } from '../../src/shared/errors.js';
import { bootOf, parseXlListLong, xlConfigFor } from '../../src/drivers/xen/xl-domain.js';
import { parseBlktrace } from '../../src/drivers/xen/file-tracking.js';
import { destinationDisk } from '../../src/drivers/xen/xen-storage.js';

const MiB = 1024 * 1024;

describe('era_invalidate output', () => {
  it('reads ranges (with its odd `end = ` spacing) and single blocks as 64 KiB extents', () => {
    const xml = '<blocks>\n  <range begin="16" end = "18"/>\n  <block block="20"/>\n</blocks>\n';
    expect(parseEraInvalidate(xml, 32 * MiB)).toEqual([
      { offset: 16 * 65536, length: 2 * 65536 },
      { offset: 20 * 65536, length: 65536 },
    ]);
  });

  it('clips the last block to the disk size and accepts an empty set', () => {
    expect(parseEraInvalidate('<blocks>\n  <block block="1"/>\n</blocks>', 65536 + 4096)).toEqual([{ offset: 65536, length: 4096 }]);
    expect(parseEraInvalidate('<blocks>\n</blocks>\n', MiB)).toEqual([]);
  });

  it('refuses output it does not understand instead of reporting no dirty blocks', () => {
    expect(() => parseEraInvalidate('<blocks>\n  <extent from="1" to="2"/>\n</blocks>', MiB)).toThrow(FerryError);
    expect(() => parseEraInvalidate('error: bad superblock', MiB)).toThrow(/unexpected era_invalidate output/);
  });
});

describe('xl list output', () => {
  it('parses names, ids and state flags', () => {
    const out = [
      'Name                                        ID   Mem VCPUs\tState\tTime(s)',
      'Domain-0                                     0   768     1     r-----     192.6',
      'g1--incoming                                 2   155     0     --p---       0.0',
      'g1                                           3   256     1     -b----       5.6',
      '',
    ].join('\n');
    expect(parseXlList(out)).toEqual([
      { name: 'Domain-0', id: 0, state: 'r-----' },
      { name: 'g1--incoming', id: 2, state: '--p---' },
      { name: 'g1', id: 3, state: '-b----' },
    ]);
  });
});

/** `xl list -l x1` measured in the Xen lab (an xl-created PVH guest on an LV and an image file), trimmed of fields Ferry ignores. */
const XL_LIST_LONG = JSON.stringify([
  {
    domid: 1,
    config: {
      c_info: { type: 'pvh', name: 'x1', domid: 4294967295, uuid: '4ac76c7f-845f-4bde-a735-d7462c240d78', run_hotplug_scripts: 'True' },
      b_info: {
        max_vcpus: 1,
        avail_vcpus: [0],
        max_memkb: 131072,
        target_memkb: 131072,
        kernel: '/ferry-host/guest/vmlinuz',
        cmdline: 'console=hvc0 rdinit=/xen-init ferry.rate=5 ferry.recbase=24',
        ramdisk: '/ferry-host/guest/initrd',
        'type.pvh': {},
      },
      disks: [
        { pdev_path: '/dev/guests/x1-root', vdev: 'xvda', format: 'raw', readwrite: 1, colo_restore_enable: 'False' },
        { pdev_path: '/var/lib/xen/images/x1-data.img', vdev: 'xvdb', format: 'raw', readwrite: 1, colo_restore_enable: 'False' },
      ],
      nics: [{ devid: 0, mac: '00:16:3e:12:34:56', bridge: 'xenbr0', nictype: 'vif' }],
      on_reboot: 'restart',
      on_soft_reset: 'soft_reset',
    },
  },
]);

describe('xl list -l and the config for xl migrate -C', () => {
  it('reads the domain as libxl describes it', () => {
    const [d] = parseXlListLong(XL_LIST_LONG);
    expect(d!.config.c_info.name).toBe('x1');
    expect(bootOf(d!)).toEqual({ kernel: '/ferry-host/guest/vmlinuz', ramdisk: '/ferry-host/guest/initrd', cmdline: 'console=hvc0 rdinit=/xen-init ferry.rate=5 ferry.recbase=24' });
    expect(() => parseXlListLong('not json')).toThrow(FerryError);
  });

  it('writes the guest\'s own settings with only the mapped disk paths changed; target= comes last (it may hold commas)', () => {
    const [d] = parseXlListLong(XL_LIST_LONG);
    const cfg = xlConfigFor(d!, { xvda: '/dev/vg-b/x1-root' });
    expect(cfg).toContain('name = "x1"\nuuid = "4ac76c7f-845f-4bde-a735-d7462c240d78"\ntype = "pvh"\nmemory = 128\nmaxmem = 128\nvcpus = 1');
    expect(cfg).toContain('cmdline = "console=hvc0 rdinit=/xen-init ferry.rate=5 ferry.recbase=24"');
    expect(cfg).toContain('disk = [ "format=raw, vdev=xvda, access=rw, target=/dev/vg-b/x1-root", "format=raw, vdev=xvdb, access=rw, target=/var/lib/xen/images/x1-data.img" ]');
    expect(cfg).toContain('vif = [ "mac=00:16:3e:12:34:56,bridge=xenbr0" ]');
    expect(cfg).toContain('on_reboot = "restart"');
  });

  it('refuses a value that would break out of its quotes', () => {
    const [d] = parseXlListLong(XL_LIST_LONG);
    d!.config.b_info.cmdline = 'quiet" disk=["phy:/dev/sda,xvdz,w"]';
    expect(() => xlConfigFor(d!, {})).toThrow(/quote/);
  });
});

/** One struct blk_io_trace (48 bytes, little-endian) plus `pdu` bytes. */
function traceRecord(o: { sector: number; bytes: number; action: number; category: number; pdu?: number; magic?: number }): Buffer {
  const b = Buffer.alloc(48 + (o.pdu ?? 0));
  b.writeUInt32LE(o.magic ?? 0x65617407, 0);
  b.writeBigUInt64LE(BigInt(o.sector), 16);
  b.writeUInt32LE(o.bytes, 24);
  b.writeUInt32LE(((o.category << 16) | o.action) >>> 0, 28);
  b.writeUInt16LE(o.pdu ?? 0, 46);
  return b;
}
const WRITE = 1 << 1;
const READ = 1 << 0;
const NOTIFY = 1 << 10;
const COMPLETE = 8;
const QUEUE = 1;

describe('blktrace records', () => {
  it('turns write and discard events into extents, skips reads, notes and empty flushes, and stops at a cut-off record or the zero tail', () => {
    const whole = Buffer.concat([
      traceRecord({ sector: 800, bytes: 4096, action: QUEUE, category: WRITE }),
      traceRecord({ sector: 800, bytes: 4096, action: COMPLETE, category: WRITE, pdu: 8 }),
      traceRecord({ sector: 4096, bytes: 65536, action: COMPLETE, category: READ }),
      traceRecord({ sector: 0, bytes: 0, action: COMPLETE, category: WRITE }),
      traceRecord({ sector: 0, bytes: 16, action: 1, category: NOTIFY, pdu: 16 }),
      traceRecord({ sector: 2048, bytes: 8192, action: COMPLETE, category: 1 << 13 }),
    ]);
    const cut = Buffer.concat([whole, traceRecord({ sector: 9000, bytes: 512, action: COMPLETE, category: WRITE, pdu: 8 }).subarray(0, 50)]);
    const { extents, consumed } = parseBlktrace(cut, 16 * MiB);
    expect(extents).toEqual([
      { offset: 2048 * 512, length: 8192 },
      { offset: 800 * 512, length: 4096 },
    ].sort((a, b) => a.offset - b.offset));
    // The last whole record is read again next time: it may have been seen half-copied.
    expect(consumed).toBe(whole.length - 48);
    // blktrace grows its files ahead of the data: a zero tail is "not written yet", not bad data.
    const tail = parseBlktrace(Buffer.concat([whole, Buffer.alloc(16384)]), 16 * MiB);
    expect(tail).toEqual({ extents, consumed });
  });

  it('clips an extent at the end of the disk and refuses output that is not blktrace', () => {
    expect(parseBlktrace(traceRecord({ sector: 2047, bytes: 4096, action: COMPLETE, category: WRITE }), 1024 * 1024).extents).toEqual([{ offset: 2047 * 512, length: 512 }]);
    expect(() => parseBlktrace(traceRecord({ sector: 0, bytes: 512, action: COMPLETE, category: WRITE, magic: 0x12345678 }), MiB)).toThrow(FerryError);
  });
});

describe('destination disks', () => {
  it('an LV keeps its name in the configured volume group; a file keeps its path unless a prefix is mapped', () => {
    const lv = { vdev: 'xvda', kind: 'lv' as const, path: '/dev/guests/x1-root', format: 'raw' as const, bytes: 32 * MiB };
    const file = { vdev: 'xvdb', kind: 'file' as const, path: '/var/lib/xen/images/x1.img', format: 'raw' as const, bytes: MiB };
    expect(destinationDisk(lv, {}).path).toBe('/dev/guests/x1-root');
    expect(destinationDisk(lv, { volumeGroup: 'vg-b' }).path).toBe('/dev/vg-b/x1-root');
    expect(destinationDisk(file, {}).path).toBe(file.path);
    expect(destinationDisk(file, { pathMap: [{ from: '/var/lib/xen/images/', to: '/srv/xen/' }] }).path).toBe('/srv/xen/x1.img');
    expect(() => destinationDisk({ ...lv, path: '/dev/sda1' }, {})).toThrow(/\/dev\/VG\/LV/);
  });
});
