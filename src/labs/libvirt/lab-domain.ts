// The libvirt lab's guest as an operator defines one: a plain domain XML (what `virsh define`
// takes), direct kernel boot from the host's boot folder, a virtio raw disk and a qcow2 disk under
// /var/lib/libvirt/images, a NIC on the host's bridge. Nothing in it is Ferry's.
import { guestAppend } from '../guest-image.js';
import { LAB_IMAGE_DIR } from './libvirt-lab.js';
import { LIBVIRT_BRIDGE } from './libvirt-hosts.js';

const MiB = 1024 * 1024;

export interface LabDomainDisk {
  vdev: 'vda' | 'vdb';
  format: 'raw' | 'qcow2';
  bytes: number;
}

export interface LabDomain {
  id: string;
  /** libvirt's domain type: `kvm` where KVM works, `qemu` (TCG) where it does not. */
  type: 'kvm' | 'qemu';
  memoryMiB?: number;
  /** Records per second the workload writes (to every disk). */
  rate?: number;
  mac: string;
  disks: LabDomainDisk[];
  kernel: string;
  initrd: string;
}

export function labDomainDiskPath(id: string, d: Pick<LabDomainDisk, 'vdev' | 'format'>): string {
  return `${LAB_IMAGE_DIR}/${id}-${d.vdev}.${d.format}`;
}

/** Records go in the last quarter of each disk (src/labs/guest/init). */
export function labRecbaseMiB(bytes: number): number {
  return Math.max(1, Math.floor((bytes / MiB) * 0.75));
}

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/'/g, '&apos;');

export function operatorDomainXml(g: LabDomain): string {
  const [d1, d2] = g.disks;
  const cmdline = [guestAppend({ rate: g.rate ?? 5, recbase: labRecbaseMiB(d1!.bytes) }), ...(d2 ? [`ferry.recbase2=${labRecbaseMiB(d2.bytes)}`] : [])].join(' ');
  const disks = g.disks.map(
    (d) =>
      `    <disk type='file' device='disk'>\n      <driver name='qemu' type='${d.format}' cache='none'/>\n      <source file='${esc(labDomainDiskPath(g.id, d))}'/>\n      <target dev='${d.vdev}' bus='virtio'/>\n    </disk>`,
  );
  return [
    `<domain type='${g.type}'>`,
    `  <name>${esc(g.id)}</name>`,
    `  <memory unit='MiB'>${g.memoryMiB ?? 128}</memory>`,
    '  <vcpu>1</vcpu>',
    '  <os>',
    "    <type arch='x86_64' machine='pc'>hvm</type>",
    `    <kernel>${esc(g.kernel)}</kernel>`,
    `    <initrd>${esc(g.initrd)}</initrd>`,
    `    <cmdline>${esc(cmdline)}</cmdline>`,
    '  </os>',
    ...(g.type === 'qemu' ? ["  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>"] : []),
    '  <on_crash>preserve</on_crash>',
    '  <devices>',
    ...disks,
    "    <interface type='bridge'>",
    `      <mac address='${g.mac}'/>`,
    `      <source bridge='${LIBVIRT_BRIDGE}'/>`,
    "      <model type='virtio'/>",
    '    </interface>',
    "    <serial type='pty'/>",
    "    <console type='pty'/>",
    '  </devices>',
    '</domain>',
    '',
  ].join('\n');
}
