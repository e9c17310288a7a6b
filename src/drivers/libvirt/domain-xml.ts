// A libvirt domain's XML (`virsh dumpxml NAME`, live or inactive) as Ferry reads it: the guest's
// shape (vCPUs, memory, direct kernel boot, its image-file disks, its interfaces) and, when Ferry
// cannot move it, the first reason why, in words an operator can act on. And the same XML with
// other disk paths, for a destination that keeps the images elsewhere. Pure functions over strings:
// the driver runs virsh. Parsing is fast-xml-parser's; nothing here matches XML with regexes.
import { XMLBuilder, XMLParser, XMLValidator } from 'fast-xml-parser';
import type { DiskSpec, InstanceSpec, NicSpec } from '../../shared/instance.js';
import { VDEV_PATTERN } from '../../shared/instance.js';
import { ID_PATTERN } from '../../shared/names.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';

export interface DomainDisk {
  vdev: string;
  path: string;
  format: 'raw' | 'qcow2';
  bus?: string;
  /** `<alias name>` from live XML, e.g. virtio-disk0. */
  alias?: string;
  cache?: string;
}

export interface DomainNic {
  mac?: string;
  /** The host bridge: `<source bridge>` (type 'bridge'; live XML also names a network's bridge). */
  bridge?: string;
  network?: string;
  type: string;
  model?: string;
}

export interface DomainXml {
  name: string;
  uuid?: string;
  /** `<domain type>`: 'kvm' | 'qemu' for the guests Ferry moves. */
  type: string;
  /** The maximum: `<vcpu current='1'>2</vcpu>` is 2. */
  vcpus: number;
  memoryKiB: number;
  os: { kernel?: string; initrd?: string; cmdline?: string; machine?: string };
  /** The image files Ferry would move, in the guest's order (no CD-ROMs). Incomplete when refused. */
  disks: DomainDisk[];
  nics: DomainNic[];
  /** Why Ferry cannot move this domain, if it cannot (the first reason found). */
  refusal?: string;
}

// --- reading ---------------------------------------------------------------------------------

const A = '@_';
const TEXT = '#text';

/** Elements that may repeat and that the reader walks: always arrays, even when single. */
const REPEATED = new Set(['domain.devices.disk', 'domain.devices.interface', 'domain.devices.hostdev', 'domain.devices.filesystem']);

const reader = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: A,
  textNodeName: TEXT,
  // Every value stays the string the XML holds: no '007' -> 7, no '0x0000' -> 0, no '1e5' -> 100000.
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: true,
  // Decodes numeric character references (&#233;) as XML requires; the default leaves them as text.
  htmlEntities: true,
  isArray: (_name, jpath) => typeof jpath === 'string' && REPEATED.has(jpath),
});

type Obj = Record<string, unknown>;

/** One element as an object (`<x/>` parses to '', `<x>t</x>` to 't'); the first of repeats. */
function el(v: unknown): Obj | undefined {
  if (Array.isArray(v)) return el(v[0]);
  if (typeof v === 'string') return { [TEXT]: v };
  if (v && typeof v === 'object') return v as Obj;
  return undefined;
}

function els(v: unknown): Obj[] {
  return (Array.isArray(v) ? v : v === undefined ? [] : [v]).map(el).filter((x): x is Obj => x !== undefined);
}

function child(o: Obj | undefined, name: string): Obj | undefined {
  return o ? el(o[name]) : undefined;
}

function attr(o: Obj | undefined, name: string): string | undefined {
  const v = o?.[A + name];
  return typeof v === 'string' ? v : undefined;
}

function text(o: Obj | undefined): string | undefined {
  const v = o?.[TEXT];
  return typeof v === 'string' ? v : undefined;
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s;
}

/** The XML is well-formed and its one element is <domain>; else BadInput. */
function checkDomainXml(xml: string): void {
  const v = typeof xml === 'string' && xml.trim() ? XMLValidator.validate(xml) : false;
  if (v !== true) {
    const why = v === false ? 'it is empty' : `${v.err.msg} (line ${v.err.line}, column ${v.err.col})`;
    throw new FerryError(ErrorTypes.BadInput, `not a libvirt domain XML: ${why}`);
  }
}

function domainOf(xml: string): Obj {
  checkDomainXml(xml);
  const doc = reader.parse(xml) as Obj;
  const roots = Object.keys(doc).filter((k) => !k.startsWith('?'));
  if (roots.length !== 1 || roots[0] !== 'domain' || Array.isArray(doc.domain)) {
    throw new FerryError(ErrorTypes.BadInput, `not a libvirt domain XML: its root is ${roots.map((r) => `<${r}>`).join(', ') || 'missing'}, not one <domain>`);
  }
  return el(doc.domain) ?? {};
}

const UNIT_POWER: Record<string, number> = { k: 1, m: 2, g: 3, t: 4, p: 5, e: 6 };

/**
 * Bytes in `value` `unit`, as libvirt scales them (virScaleInteger, case-insensitive): b/byte/bytes;
 * k, KiB, M, MiB, ... powers of 1024; KB, MB, ... powers of 1000. No unit is KiB.
 */
function scaledBytes(value: string, unit: string | undefined): bigint | undefined {
  if (!/^\d+$/.test(value.trim())) return undefined;
  const n = BigInt(value.trim());
  const u = (unit ?? 'KiB').trim().toLowerCase();
  if (u === 'b' || u === 'byte' || u === 'bytes') return n;
  const power = UNIT_POWER[u[0] ?? ''];
  if (power === undefined) return undefined;
  const rest = u.slice(1);
  const base = rest === '' || rest === 'ib' ? 1024n : rest === 'b' ? 1000n : undefined;
  return base === undefined ? undefined : n * base ** BigInt(power);
}

/** The domain's `<memory>` in KiB, rounded up as libvirt does, or why it cannot be read. */
function memoryKiBOf(dom: Obj): number | string {
  const m = child(dom, 'memory');
  const v = text(m);
  if (v === undefined) return 'its XML has no <memory>';
  const bytes = scaledBytes(v, attr(m, 'unit'));
  if (bytes === undefined) return `its memory size "${v}" (unit "${attr(m, 'unit') ?? 'KiB'}") is not a size libvirt reads`;
  const kib = (bytes + 1023n) / 1024n;
  if (kib > BigInt(Number.MAX_SAFE_INTEGER)) return `its memory size ${v} ${attr(m, 'unit') ?? 'KiB'} is out of range`;
  return Number(kib);
}

/** Where a disk that is not an image file lives, for the refusal. */
function describeSource(source: Obj | undefined): string {
  if (!source) return 'nothing';
  const proto = attr(source, 'protocol');
  const name = attr(source, 'name');
  if (proto || name) return `${proto ?? 'network'}:${name ?? '?'}`;
  const pool = attr(source, 'pool');
  const vol = attr(source, 'volume');
  if (pool || vol) return `${pool ?? '?'}/${vol ?? '?'}`;
  return attr(source, 'file') ?? attr(source, 'dev') ?? attr(source, 'dir') ?? '?';
}

/** A CD-ROM or floppy with something in it: a file, a device, a volume or a network image. */
function hasMedia(source: Obj | undefined): boolean {
  return ['file', 'dev', 'dir', 'name', 'pool', 'volume'].some((a) => nonEmpty(attr(source, a)) !== undefined);
}

/** The disk Ferry would move, or why it cannot; undefined for an empty CD-ROM or floppy drive. */
function diskFrom(domain: string, d: Obj): DomainDisk | string | undefined {
  const device = attr(d, 'device') ?? 'disk';
  const type = attr(d, 'type') ?? 'file';
  const source = child(d, 'source');
  const target = child(d, 'target');
  const vdev = attr(target, 'dev');
  if (device === 'cdrom' || device === 'floppy') {
    if (!hasMedia(source)) return undefined;
    const what = device === 'cdrom' ? 'a CD-ROM' : 'a floppy drive';
    return `disk ${vdev ?? '?'} is ${what} with media (${describeSource(source)}): eject it (virsh change-media ${domain} ${vdev ?? 'DEV'} --eject) before migrating`;
  }
  if (!vdev) return 'a disk has no <target dev>';
  if (!VDEV_PATTERN.test(vdev)) return `disk ${vdev}: not a device name Ferry knows (2-16 of a-z and 0-9, starting with a letter)`;
  if (device === 'lun') return `disk ${vdev} is the host's SCSI LUN ${describeSource(source)} passed through: Ferry moves image files`;
  if (device !== 'disk') return `disk ${vdev} is a ${device} device: Ferry moves disks`;
  switch (type) {
    case 'file':
      break;
    case 'block':
      return `disk ${vdev} is the host block device ${describeSource(source)}: the libvirt driver moves image files (<disk type='file'>)`;
    case 'network':
      return `disk ${vdev} is the network image ${describeSource(source)}: storage every node reaches needs no copy, and Ferry moves local image files (<disk type='file'>)`;
    case 'volume':
      return `disk ${vdev} is the storage pool volume ${describeSource(source)}: name its image file instead (<disk type='file'>) to migrate it`;
    default:
      return `disk ${vdev} is of type ${type}: Ferry moves image files (<disk type='file'>)`;
  }
  const path = nonEmpty(attr(source, 'file'));
  if (!path) return `disk ${vdev} has no source file`;
  if (!path.startsWith('/')) return `disk ${vdev}: its source ${path} is not an absolute path`;
  const driver = child(d, 'driver');
  const format = attr(driver, 'type') ?? 'raw';
  if (format !== 'raw' && format !== 'qcow2') return `disk ${vdev} (${path}) is ${format}: Ferry moves raw and qcow2 images`;
  const backing = child(d, 'backingStore');
  const backingSource = child(backing, 'source');
  if (backingSource) {
    return `disk ${vdev} (${path}) is an overlay on ${describeSource(backingSource)}: flatten it (virsh blockpull ${domain} ${vdev} --wait) before migrating`;
  }
  const dataStore = child(source, 'dataStore');
  if (dataStore) return `disk ${vdev} (${path}) keeps its data in the separate file ${describeSource(child(dataStore, 'source'))}: Ferry moves self-contained images`;
  if (child(d, 'readonly')) return `disk ${vdev} (${path}) is read-only: Ferry moves writable disks; detach it (virsh detach-disk ${domain} ${vdev} --live) to migrate`;
  if (child(d, 'shareable')) return `disk ${vdev} (${path}) is shareable: another guest may write it; detach it (virsh detach-disk ${domain} ${vdev} --live) to migrate`;
  const bus = attr(target, 'bus');
  const alias = attr(child(d, 'alias'), 'name');
  const cache = attr(driver, 'cache');
  return { vdev, path, format, ...(bus ? { bus } : {}), ...(alias ? { alias } : {}), ...(cache ? { cache } : {}) };
}

/** A host device the guest owns: PCI, USB, SCSI or mdev passthrough. */
function hostdevReason(domain: string, h: Obj): string {
  const type = (attr(h, 'type') ?? attr(h, 'mode') ?? 'unknown').toUpperCase();
  const addr = child(child(h, 'source'), 'address');
  const [dom, bus, slot, fn] = ['domain', 'bus', 'slot', 'function'].map((a) => attr(addr, a)?.replace(/^0x/, ''));
  const at = dom && bus && slot && fn ? ` ${dom}:${bus}:${slot}.${fn}` : '';
  return `it has a host ${type} device${at} passed through (<hostdev>): detach it (virsh detach-device ${domain} FILE --live) before migrating`;
}

/** Reads a domain's XML; throws BadInput only when it is not a libvirt domain at all. */
export function parseDomainXml(xml: string): DomainXml {
  const dom = domainOf(xml);
  const reasons: string[] = [];
  const name = text(child(dom, 'name')) ?? '';
  if (!name) reasons.push('it has no name');
  else if (!ID_PATTERN.test(name)) reasons.push(`its name is not a Ferry instance id (1-63 of a-z, 0-9 and "-"): rename the domain to migrate it`);
  const type = attr(dom, 'type') ?? '';
  if (type !== 'kvm' && type !== 'qemu') reasons.push(`it is a ${type || 'typeless'} domain: the libvirt driver moves QEMU/KVM guests (type 'kvm' or 'qemu')`);

  const vcpuText = text(child(dom, 'vcpu'));
  let vcpus = 1;
  if (vcpuText !== undefined) {
    vcpus = /^\d+$/.test(vcpuText) ? Number(vcpuText) : 0;
    if (vcpus < 1) reasons.push(`its vcpu count "${vcpuText}" is not a positive number`);
  }
  const mem = memoryKiBOf(dom);
  if (typeof mem === 'string') reasons.push(mem);
  const memoryKiB = typeof mem === 'number' ? mem : 0;

  const os = child(dom, 'os');
  const osOut: DomainXml['os'] = {};
  const kernel = nonEmpty(text(child(os, 'kernel')));
  const initrd = nonEmpty(text(child(os, 'initrd')));
  const cmdline = nonEmpty(text(child(os, 'cmdline')));
  const machine = attr(child(os, 'type'), 'machine');
  if (kernel) osOut.kernel = kernel;
  if (initrd) osOut.initrd = initrd;
  if (cmdline) osOut.cmdline = cmdline;
  if (machine) osOut.machine = machine;

  const devices = child(dom, 'devices');
  const disks: DomainDisk[] = [];
  for (const d of els(devices?.disk)) {
    const r = diskFrom(name || 'DOMAIN', d);
    if (typeof r === 'string') reasons.push(r);
    else if (r) disks.push(r);
  }
  const nics: DomainNic[] = [];
  for (const i of els(devices?.interface)) {
    const itype = attr(i, 'type') ?? '';
    const mac = attr(child(i, 'mac'), 'address');
    if (itype === 'hostdev') reasons.push(`its interface${mac ? ` ${mac}` : ''} is a host network device passed through (<interface type='hostdev'>): detach it (virsh detach-interface ${name || 'DOMAIN'} hostdev --live) before migrating`);
    const source = child(i, 'source');
    const bridge = attr(source, 'bridge');
    const network = attr(source, 'network');
    const model = attr(child(i, 'model'), 'type');
    nics.push({ type: itype, ...(mac ? { mac } : {}), ...(bridge ? { bridge } : {}), ...(network ? { network } : {}), ...(model ? { model } : {}) });
  }
  for (const h of els(devices?.hostdev)) reasons.push(hostdevReason(name || 'DOMAIN', h));
  for (const f of els(devices?.filesystem)) {
    const dir = attr(child(f, 'source'), 'dir') ?? describeSource(child(f, 'source'));
    reasons.push(`it shares the host's directory ${dir} with the guest (<filesystem>): Ferry cannot move it; detach it before migrating`);
  }
  if (disks.length === 0) reasons.push('it has no disk');

  const uuid = nonEmpty(text(child(dom, 'uuid')));
  return {
    name,
    ...(uuid ? { uuid } : {}),
    type,
    vcpus,
    memoryKiB,
    os: osOut,
    disks,
    nics,
    ...(reasons.length ? { refusal: reasons[0] } : {}),
  };
}

/** The InstanceSpec, given disk sizes (virtual bytes, keyed by vdev) the caller measured on the host. */
export function instanceSpecOf(d: DomainXml, diskBytes: Record<string, number>): InstanceSpec {
  if (d.refusal) throw new FerryError(ErrorTypes.BadInput, `domain ${d.name} cannot be moved: ${d.refusal}`);
  const disks: DiskSpec[] = d.disks.map((x) => {
    const bytes = diskBytes[x.vdev];
    if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) throw new Error(`no size measured for disk ${x.vdev} of ${d.name}`);
    return { vdev: x.vdev, kind: 'file', path: x.path, format: x.format, bytes };
  });
  const nics: NicSpec[] = d.nics.map((n) => ({ ...(n.mac ? { mac: n.mac.toLowerCase() } : {}), ...(n.bridge ? { bridge: n.bridge } : {}) }));
  const { kernel, initrd, cmdline } = d.os;
  return {
    id: d.name,
    hypervisor: 'libvirt',
    vcpus: d.vcpus,
    memoryMiB: Math.ceil(d.memoryKiB / 1024),
    disks,
    nics,
    ...(kernel ? { boot: { kernel, ...(initrd ? { initrd } : {}), ...(cmdline ? { append: cmdline } : {}) } } : {}),
    startedBy: 'libvirt',
    extra: { domainType: d.type },
  };
}

// --- rewriting -------------------------------------------------------------------------------

// The document as fast-xml-parser's ordered tree, with every text and attribute value exactly as
// written (entities undecoded, whitespace kept) so that the builder writes it back unchanged.
const ROUND_TRIP = {
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: A,
  textNodeName: TEXT,
  commentPropName: '#comment',
  cdataPropName: '#cdata',
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  processEntities: false,
} as const;

const orderedReader = new XMLParser(ROUND_TRIP);
const writer = new XMLBuilder({ ...ROUND_TRIP, format: false, suppressEmptyNode: true });

/** One node of the ordered tree: `{ tag: children, ':@': attributes }`. */
type Node = Record<string, unknown>;
const ATTRS = ':@';

function tagOf(n: Node): string | undefined {
  return Object.keys(n).find((k) => k !== ATTRS);
}

function childrenOf(n: Node): Node[] {
  const tag = tagOf(n);
  const c = tag ? n[tag] : undefined;
  return Array.isArray(c) ? (c as Node[]) : [];
}

function elements(nodes: Node[], tag: string): Node[] {
  return nodes.filter((n) => tagOf(n) === tag);
}

function attrsOf(n: Node): Record<string, string> | undefined {
  return n[ATTRS] as Record<string, string> | undefined;
}

/** The value as it goes between quotes in XML (the builder escapes the quotes themselves). */
function escapeValue(v: string): string {
  return v.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
}

/**
 * The domain's XML with the `<source file>` of each disk named in `paths` (by vdev) set to its new
 * path, for a destination with another storage layout. Everything else is written back as it was:
 * element and attribute order, text, comments, CDATA and entity references; only the quoting
 * changes (double quotes, `<x></x>` as `<x/>`). Throws when a vdev is not a file disk of the domain.
 */
export function withDiskPaths(xml: string, paths: Record<string, string>): string {
  checkDomainXml(xml);
  const doc = orderedReader.parse(xml) as Node[];
  const domains = doc.filter((n) => tagOf(n) === 'domain');
  if (domains.length !== 1) throw new FerryError(ErrorTypes.BadInput, 'not a libvirt domain XML: no single <domain>');
  const todo = new Set(Object.keys(paths));
  for (const devices of elements(childrenOf(domains[0]), 'devices')) {
    for (const disk of elements(childrenOf(devices), 'disk')) {
      const kids = childrenOf(disk);
      const vdev = elements(kids, 'target').map((t) => attrsOf(t)?.[`${A}dev`])[0];
      if (vdev === undefined || !todo.has(vdev)) continue;
      const path = paths[vdev];
      if (typeof path !== 'string' || !path.startsWith('/') || path.includes('\0')) throw new Error(`disk ${vdev}: ${JSON.stringify(path)} is not an absolute path`);
      const source = elements(kids, 'source')[0];
      const attrs = source && attrsOf(source);
      if ((attrsOf(disk)?.[`${A}type`] ?? 'file') !== 'file' || !attrs || attrs[`${A}file`] === undefined) {
        throw new Error(`disk ${vdev} of the domain has no <source file> to rewrite`);
      }
      attrs[`${A}file`] = escapeValue(path);
      todo.delete(vdev);
    }
  }
  if (todo.size) throw new Error(`the domain has no disk ${[...todo].join(', ')}`);
  const out = writer.build(doc) as string;
  // The builder drops what follows the root element (libvirt ends its XML with a newline).
  return out.trimEnd() + xml.slice(xml.trimEnd().length);
}
