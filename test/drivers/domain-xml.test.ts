// The libvirt driver's reading of a domain's XML: real libvirt 9.0 samples (what an operator
// defined, the running domain's live XML, the inactive XML), every refusal made by editing a sample,
// memory units, and the disk-path rewrite that must leave everything but the sources as it was.
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { XMLParser } from 'fast-xml-parser';
import { instanceSpecOf, parseDomainXml, withDiskPaths, type DomainXml } from '../../src/drivers/libvirt/domain-xml.js';
import { ErrorTypes, FerryError } from '../../src/shared/errors.js';

const fixture = (name: string) => readFileSync(new URL(`./fixtures/libvirt/${name}`, import.meta.url), 'utf8');
const DEFINED = fixture('t2-defined.xml');
const LIVE = fixture('t2-live.xml');
const INACTIVE = fixture('t2-inactive.xml');
const SAMPLES = { 't2-defined.xml': DEFINED, 't2-live.xml': LIVE, 't2-inactive.xml': INACTIVE };

const VDA = '/var/lib/libvirt/images/t1-vda.raw';
const VDB = '/var/lib/libvirt/images/t1-vdb.qcow2';
const CMDLINE = 'console=ttyS0 panic=-1 quiet loglevel=3 ferry.rate=5 ferry.recbase=48 ferry.recbase2=48';
const MiB = 1024 * 1024;

/** The sample with `from` (which must be in it) replaced: how the refusal cases are made. */
function edit(xml: string, from: string, to: string): string {
  expect(xml.includes(from), `sample holds ${from}`).toBe(true);
  return xml.replace(from, to);
}

/** A device added to the live sample's <devices>. */
function withDevice(device: string, xml = LIVE): string {
  return edit(xml, '    <controller type=\'usb\'', `    ${device}\n    <controller type='usb'`);
}

/** The live sample's vdb <disk> element replaced. */
const LIVE_VDB = LIVE.slice(LIVE.indexOf("    <disk type='file' device='disk'>\n      <driver name='qemu' type='qcow2'"), LIVE.indexOf('    <controller'));
function withVdb(disk: string): string {
  return edit(LIVE, LIVE_VDB, `    ${disk}\n`);
}

function refusalOf(xml: string): string | undefined {
  return parseDomainXml(xml).refusal;
}

function badInput(f: () => unknown): FerryError {
  try {
    f();
  } catch (e) {
    if (e instanceof FerryError) return e;
    throw e;
  }
  throw new Error('expected a FerryError');
}

describe('parseDomainXml: the samples', () => {
  it('reads what the operator defined', () => {
    expect(parseDomainXml(DEFINED)).toEqual<DomainXml>({
      name: 't2',
      type: 'qemu',
      vcpus: 1,
      memoryKiB: 128 * 1024,
      os: { kernel: '/var/lib/libvirt/boot/vmlinuz', initrd: '/var/lib/libvirt/boot/initrd', cmdline: CMDLINE, machine: 'pc' },
      disks: [
        { vdev: 'vda', path: VDA, format: 'raw', bus: 'virtio', cache: 'none' },
        { vdev: 'vdb', path: VDB, format: 'qcow2', bus: 'virtio', cache: 'none' },
      ],
      nics: [{ type: 'bridge', mac: '52:54:00:12:34:56', bridge: 'br0', model: 'virtio' }],
    });
  });

  it.each([
    ['live', LIVE],
    ['inactive', INACTIVE],
  ])('reads the %s XML, with the disks\' aliases', (_what, xml) => {
    expect(parseDomainXml(xml)).toEqual<DomainXml>({
      name: 't2',
      uuid: '8140207f-3125-451c-8682-ab11d0315cc2',
      type: 'qemu',
      vcpus: 1,
      memoryKiB: 131072,
      os: { kernel: '/var/lib/libvirt/boot/vmlinuz', initrd: '/var/lib/libvirt/boot/initrd', cmdline: CMDLINE, machine: 'pc-i440fx-7.2' },
      disks: [
        { vdev: 'vda', path: VDA, format: 'raw', bus: 'virtio', alias: 'virtio-disk0', cache: 'none' },
        { vdev: 'vdb', path: VDB, format: 'qcow2', bus: 'virtio', alias: 'virtio-disk1', cache: 'none' },
      ],
      nics: [{ type: 'bridge', mac: '52:54:00:12:34:56', bridge: 'br0', model: 'virtio' }],
    });
  });

  it('describes the live domain as an InstanceSpec', () => {
    expect(instanceSpecOf(parseDomainXml(edit(LIVE, '52:54:00:12:34:56', '52:54:00:AB:CD:EF')), { vda: 64 * MiB, vdb: 32 * MiB })).toEqual({
      id: 't2',
      hypervisor: 'libvirt',
      vcpus: 1,
      memoryMiB: 128,
      disks: [
        { vdev: 'vda', kind: 'file', path: VDA, format: 'raw', bytes: 64 * MiB },
        { vdev: 'vdb', kind: 'file', path: VDB, format: 'qcow2', bytes: 32 * MiB },
      ],
      nics: [{ mac: '52:54:00:ab:cd:ef', bridge: 'br0' }],
      boot: { kernel: '/var/lib/libvirt/boot/vmlinuz', initrd: '/var/lib/libvirt/boot/initrd', append: CMDLINE },
      startedBy: 'libvirt',
      extra: { domainType: 'qemu' },
    });
  });

  it('gives no boot without a direct kernel, and a network interface its bridge from the live XML', () => {
    const xml = edit(
      edit(LIVE, '<kernel>/var/lib/libvirt/boot/vmlinuz</kernel>', ''),
      "<interface type='bridge'>\n      <mac address='52:54:00:12:34:56'/>\n      <source bridge='br0'/>",
      "<interface type='network'>\n      <mac address='52:54:00:12:34:56'/>\n      <source network='default' portid='2d3c' bridge='virbr0'/>",
    );
    const d = parseDomainXml(xml);
    expect(d.os.kernel).toBeUndefined();
    expect(d.nics).toEqual([{ type: 'network', mac: '52:54:00:12:34:56', bridge: 'virbr0', network: 'default', model: 'virtio' }]);
    const spec = instanceSpecOf(d, { vda: MiB, vdb: MiB });
    expect(spec.boot).toBeUndefined();
    expect(spec.nics).toEqual([{ mac: '52:54:00:12:34:56', bridge: 'virbr0' }]);
  });

  it('refuses to describe a refused domain, or a disk it has no size for', () => {
    expect(() => instanceSpecOf(parseDomainXml(edit(LIVE, '<name>t2</name>', '<name>T2</name>')), { vda: MiB, vdb: MiB })).toThrow(/cannot be moved: its name/);
    expect(() => instanceSpecOf(parseDomainXml(LIVE), { vda: MiB })).toThrow(/no size measured for disk vdb/);
  });

  it('keeps numeric-looking values as the strings they are', () => {
    const xml = edit(edit(DEFINED, '<name>t2</name>', '<name>007</name>'), 'console=ttyS0 panic=-1', '1e5');
    const d = parseDomainXml(xml);
    expect(d.name).toBe('007');
    expect(d.refusal).toBeUndefined();
    expect(d.os.cmdline?.startsWith('1e5 quiet')).toBe(true);
    expect(parseDomainXml(edit(DEFINED, '<name>t2</name>', '<name>1e5</name>')).name).toBe('1e5');
  });

  it('decodes entities and character references in values', () => {
    const d = parseDomainXml(edit(DEFINED, `file='${VDA}'`, "file='/var/lib/libvirt/images/caf&#233; &amp; &apos;co&apos;.raw'"));
    expect(d.disks[0].path).toBe("/var/lib/libvirt/images/café & 'co'.raw");
  });

  it('uses the maximum vCPU count', () => {
    expect(parseDomainXml(edit(LIVE, "<vcpu placement='static'>1</vcpu>", "<vcpu placement='static' current='1'>4</vcpu>")).vcpus).toBe(4);
    expect(parseDomainXml(edit(LIVE, "<vcpu placement='static'>1</vcpu>", '')).vcpus).toBe(1);
    expect(refusalOf(edit(LIVE, "<vcpu placement='static'>1</vcpu>", '<vcpu>two</vcpu>'))).toMatch(/vcpu count "two"/);
  });
});

describe('parseDomainXml: memory units', () => {
  const GiB = 1024 * 1024; // in KiB
  it.each([
    ['b', '134217728', 131072],
    ['bytes', '134217728', 131072],
    ['bytes', '1000', 1], // rounded up to a whole KiB, as libvirt does
    ['KB', '1024000', 1_000_000],
    ['k', '131072', 131072],
    ['KiB', '131072', 131072],
    ['kib', '131072', 131072],
    ['MB', '128', 125_000],
    ['M', '128', 131072],
    ['MiB', '128', 131072],
    ['GB', '1', 976_563],
    ['G', '2', 2 * GiB],
    ['GiB', '2', 2 * GiB],
    ['TB', '1', 976_562_500],
    ['T', '1', 1024 * GiB],
    ['TiB', '1', 1024 * GiB],
  ])('<memory unit=%j>%s</memory> is %d KiB', (unit, value, kib) => {
    const d = parseDomainXml(edit(LIVE, "<memory unit='KiB'>131072</memory>", `<memory unit='${unit}'>${value}</memory>`));
    expect(d.refusal).toBeUndefined();
    expect(d.memoryKiB).toBe(kib);
  });

  it('reads no unit as KiB and rounds MiB up', () => {
    const d = parseDomainXml(edit(LIVE, "<memory unit='KiB'>131072</memory>", '<memory>131073</memory>'));
    expect(d.memoryKiB).toBe(131073);
    expect(instanceSpecOf(d, { vda: MiB, vdb: MiB }).memoryMiB).toBe(129);
  });

  it('refuses a unit or a size it cannot read, and a domain without memory', () => {
    expect(refusalOf(edit(LIVE, "<memory unit='KiB'>131072</memory>", "<memory unit='furlong'>3</memory>"))).toMatch(/memory size "3" \(unit "furlong"\)/);
    expect(refusalOf(edit(LIVE, "<memory unit='KiB'>131072</memory>", "<memory unit='KiB'>12.5</memory>"))).toMatch(/memory size "12.5"/);
    expect(refusalOf(edit(LIVE, "<memory unit='KiB'>131072</memory>", ''))).toMatch(/no <memory>/);
  });
});

describe('parseDomainXml: what Ferry cannot move', () => {
  const ISO = '/var/lib/libvirt/images/install.iso';
  it('ignores an empty CD-ROM drive', () => {
    const d = parseDomainXml(withDevice("<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/><alias name='ide0-1-0'/></disk>"));
    expect(d.refusal).toBeUndefined();
    expect(d.disks.map((x) => x.vdev)).toEqual(['vda', 'vdb']);
  });

  it.each<[string, string, RegExp]>([
    ['a CD-ROM with media', withDevice(`<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='${ISO}' index='3'/><target dev='hdc' bus='ide'/><readonly/></disk>`), /^disk hdc is a CD-ROM with media \(\/var\/lib\/libvirt\/images\/install.iso\): eject it \(virsh change-media t2 hdc --eject\)/],
    ['a floppy with media', withDevice(`<disk type='file' device='floppy'><source file='/var/lib/libvirt/images/f.img'/><target dev='fda' bus='fdc'/></disk>`), /^disk fda is a floppy drive with media/],
    ['a block disk', withVdb("<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'/><source dev='/dev/vg0/t2-vdb'/><target dev='vdb' bus='virtio'/></disk>"), /^disk vdb is the host block device \/dev\/vg0\/t2-vdb/],
    ['a network disk', withVdb("<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/t2-vdb'><host name='ceph1' port='6789'/></source><target dev='vdb' bus='virtio'/></disk>"), /^disk vdb is the network image rbd:pool\/t2-vdb/],
    ['a pool volume', withVdb("<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='default' volume='t2-vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>"), /^disk vdb is the storage pool volume default\/t2-vdb.qcow2/],
    ['a SCSI LUN', withVdb("<disk type='block' device='lun'><source dev='/dev/sdc'/><target dev='sdb' bus='scsi'/></disk>"), /^disk sdb is the host's SCSI LUN \/dev\/sdc/],
    [
      'a backing chain',
      withVdb(`<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='${VDB}' index='1'/><backingStore type='file' index='3'><format type='qcow2'/><source file='/var/lib/libvirt/images/base.qcow2'/><backingStore/></backingStore><target dev='vdb' bus='virtio'/></disk>`),
      /^disk vdb \(\/var\/lib\/libvirt\/images\/t1-vdb.qcow2\) is an overlay on \/var\/lib\/libvirt\/images\/base.qcow2: flatten it \(virsh blockpull t2 vdb --wait\)/,
    ],
    ['a qcow2 data file', withVdb(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${VDB}'><dataStore type='file'><format type='raw'/><source file='/var/lib/libvirt/images/vdb.data'/></dataStore></source><target dev='vdb' bus='virtio'/></disk>`), /keeps its data in the separate file \/var\/lib\/libvirt\/images\/vdb.data/],
    ['another format', edit(LIVE, "type='qcow2'", "type='vmdk'"), /^disk vdb \(\/var\/lib\/libvirt\/images\/t1-vdb.qcow2\) is vmdk: Ferry moves raw and qcow2 images/],
    ['a disk without source', edit(LIVE, `<source file='${VDB}' index='1'/>`, ''), /^disk vdb has no source file/],
    ['a read-only disk', edit(LIVE, `<source file='${VDB}' index='1'/>`, `<source file='${VDB}' index='1'/><readonly/>`), /^disk vdb \(.*\) is read-only: .*virsh detach-disk t2 vdb --live/],
    ['a shareable disk', edit(LIVE, `<source file='${VDB}' index='1'/>`, `<source file='${VDB}' index='1'/><shareable/>`), /^disk vdb \(.*\) is shareable/],
    ['a device name Ferry does not know', edit(LIVE, "<target dev='vdb' bus='virtio'/>", "<target dev='vd_b' bus='virtio'/>"), /^disk vd_b: not a device name Ferry knows/],
    ['a name that is not an instance id', edit(LIVE, '<name>t2</name>', '<name>T2_web</name>'), /^its name is not a Ferry instance id .*rename the domain/],
    ['PCI passthrough', withDevice("<hostdev mode='subsystem' type='pci' managed='yes'><source><address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>"), /^it has a host PCI device 0000:03:00.0 passed through \(<hostdev>\): detach it \(virsh detach-device t2 FILE --live\)/],
    ['an SR-IOV interface', withDevice("<interface type='hostdev' managed='yes'><mac address='52:54:00:6d:90:02'/><source><address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></source></interface>"), /^its interface 52:54:00:6d:90:02 is a host network device passed through/],
    ['a shared host directory', withDevice("<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/><source dir='/srv/share'/><target dir='share'/></filesystem>"), /^it shares the host's directory \/srv\/share/],
    ['another domain type', edit(LIVE, "<domain type='qemu' id='4'>", "<domain type='xen' id='4'>"), /^it is a xen domain: the libvirt driver moves QEMU\/KVM guests/],
    ['no disk', edit(edit(LIVE, LIVE_VDB, ''), LIVE.slice(LIVE.indexOf("    <disk type='file' device='disk'>"), LIVE.indexOf(LIVE_VDB)), ''), /^it has no disk$/],
  ])('refuses %s', (_what, xml, reason) => {
    const d = parseDomainXml(xml);
    expect(d.refusal).toMatch(reason);
  });

  it('gives the first reason', () => {
    const xml = withDevice("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>", edit(LIVE, "type='qcow2'", "type='vmdk'"));
    expect(refusalOf(xml)).toMatch(/^disk vdb .* is vmdk/);
    expect(refusalOf(edit(xml, '<name>t2</name>', '<name>T2</name>'))).toMatch(/^its name/);
    expect(refusalOf(edit(LIVE, "<domain type='qemu' id='4'>", "<domain type='kvm' id='4'>"))).toBeUndefined();
    expect(refusalOf(withDevice("<hostdev mode='subsystem' type='usb'><source><vendor id='0x1234'/><product id='0xbeef'/></source></hostdev>"))).toMatch(/^it has a host USB device passed through/);
  });

  it.each([
    ['an empty string', ''],
    ['text', 'error: failed to get domain t3'],
    ['another libvirt object', "<network><name>default</name></network>"],
    ['malformed XML', '<domain><name>t2</domain>'],
    ['two domains', '<domain type="kvm"/><domain type="kvm"/>'],
  ])('throws BadInput for %s', (_what, xml) => {
    expect(badInput(() => parseDomainXml(xml)).type).toBe(ErrorTypes.BadInput);
    expect(badInput(() => withDiskPaths(xml, {})).type).toBe(ErrorTypes.BadInput);
  });

  it('reads a bare <domain/> as a domain it refuses', () => {
    expect(parseDomainXml('<domain/>').refusal).toBe('it has no name');
  });
});

// --- withDiskPaths ---

const decoded = new XMLParser({ preserveOrder: true, ignoreAttributes: false, attributeNamePrefix: '@_', parseTagValue: false, parseAttributeValue: false, trimValues: false, commentPropName: '#comment', cdataPropName: '#cdata', htmlEntities: true });
type Node = Record<string, unknown>;
const tagOf = (n: Node) => Object.keys(n).find((k) => k !== ':@')!;
const kids = (n: Node) => n[tagOf(n)] as Node[];

/** The document as a decoded ordered tree, with each disk's <source file> set from `paths`. */
function treeWith(xml: string, paths: Record<string, string> = {}): Node[] {
  const doc = decoded.parse(xml) as Node[];
  for (const devices of kids(doc.find((n) => tagOf(n) === 'domain')!).filter((n) => tagOf(n) === 'devices')) {
    for (const disk of kids(devices).filter((n) => tagOf(n) === 'disk')) {
      const vdev = (kids(disk).find((n) => tagOf(n) === 'target')?.[':@'] as Record<string, string> | undefined)?.['@_dev'];
      const source = kids(disk).find((n) => tagOf(n) === 'source')?.[':@'] as Record<string, string> | undefined;
      if (vdev && paths[vdev] !== undefined && source) source['@_file'] = paths[vdev];
    }
  }
  return doc;
}

describe('withDiskPaths', () => {
  const NEW = { vda: '/srv/ferry/t2/vda.raw', vdb: '/srv/ferry/t2/vdb.qcow2' };

  it.each(Object.entries(SAMPLES))('changes only the disks\' sources of %s', (_name, xml) => {
    const out = withDiskPaths(xml, NEW);
    // Everything else, compared element by element, attribute by attribute, text by text.
    expect(treeWith(out)).toEqual(treeWith(xml, NEW));
    const before = parseDomainXml(xml);
    const after = parseDomainXml(out);
    expect(after).toEqual({ ...before, disks: before.disks.map((d) => ({ ...d, path: NEW[d.vdev as 'vda' | 'vdb'] })) });
    // And as text: the same bytes but for the paths and the quote character.
    expect(out).toBe(xml.replaceAll("'", '"').replace(VDA, NEW.vda).replace(VDB, NEW.vdb));
  });

  it('leaves the disks it is not given alone', () => {
    const out = withDiskPaths(LIVE, { vdb: NEW.vdb });
    expect(parseDomainXml(out).disks.map((d) => d.path)).toEqual([VDA, NEW.vdb]);
    expect(withDiskPaths(LIVE, {})).toBe(LIVE.replaceAll("'", '"'));
  });

  it('escapes what it writes', () => {
    const odd = `/srv/a&b <c> "d" 'e'.raw`;
    const out = withDiskPaths(LIVE, { vda: odd });
    expect(parseDomainXml(out).disks[0].path).toBe(odd);
    expect(treeWith(out)).toEqual(treeWith(LIVE, { vda: odd }));
  });

  it('keeps comments, CDATA, namespaces, entity references and metadata', () => {
    const xml = edit(
      edit(LIVE, '  <name>t2</name>', `<!-- edited by hand -->\n  <name>t2</name>\n  <description>caf&#233; &amp; "bar" &lt;ok&gt;</description>\n  <metadata><app:info xmlns:app='urn:example'><![CDATA[raw <x> & y]]></app:info></metadata>`),
      '</domain>',
      "  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:arg value='-trace'/><qemu:arg value='enable=qcow2*'/></qemu:commandline>\n</domain>",
    );
    const out = withDiskPaths(xml, NEW);
    expect(treeWith(out)).toEqual(treeWith(xml, NEW));
    expect(out).toContain('<description>caf&#233; &amp; "bar" &lt;ok&gt;</description>');
    expect(out).toContain('<![CDATA[raw <x> & y]]>');
    expect(out).toContain('<!-- edited by hand -->');
    expect(out).toContain('<qemu:arg value="enable=qcow2*"/>');
  });

  it('refuses a disk the domain does not have as an image file', () => {
    expect(() => withDiskPaths(LIVE, { vdc: '/x.raw' })).toThrow(/no disk vdc/);
    expect(() => withDiskPaths(LIVE, { vda: 'relative.raw' })).toThrow(/not an absolute path/);
    expect(() => withDiskPaths(withVdb("<disk type='block' device='disk'><source dev='/dev/vg0/x'/><target dev='vdb' bus='virtio'/></disk>"), { vdb: '/x.raw' })).toThrow(/no <source file>/);
  });
});
