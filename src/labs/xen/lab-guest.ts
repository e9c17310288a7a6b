// The Xen lab's guest, made the way an operator makes one: disks on the dom0's volume group
// `guests` (LVs) or image files under /var/lib/xen/images, and an xl config file in /etc/xen that
// `xl create` boots. Its workload is the QEMU lab's (counter, fsync'ed records on every disk,
// request port 7000), as a PVH (or PV) domain from the kernel and initramfs on each dom0. The guest
// sits on its dom0's xenbr0 at 10.0.2.15: only that dom0 reaches it.
import { guestAppend } from '../guest-image.js';
import { DOM0_GUEST_INITRD, DOM0_GUEST_KERNEL } from './xen-lab.js';

/** Ferry's per-instance state on each dom0. */
export const XEN_STATE_DIR = '/var/lib/ferry/xen';
export const XEN_GUEST_ADDRESS = '10.0.2.15';
export const XEN_GUEST_PORT = 7000;
/** The volume group every lab dom0 has (src/labs/xen/dom0-init). */
export const LAB_VG = 'guests';

const MiB = 1024 * 1024;

export interface LabDisk {
  vdev: 'xvda' | 'xvdb';
  kind: 'lv' | 'file';
  bytes: number;
}

export interface LabGuest {
  id: string;
  type?: 'pvh' | 'pv';
  memoryMiB?: number;
  /** Records per second the workload writes (to every disk). */
  rate?: number;
  mac?: string;
  disks: LabDisk[];
}

/** Where an operator keeps the disk: `/dev/guests/<id>-<vdev>` or `/var/lib/xen/images/<id>-<vdev>.img`. */
export function labDiskPath(id: string, d: Pick<LabDisk, 'kind' | 'vdev'>): string {
  return d.kind === 'lv' ? `/dev/${LAB_VG}/${id}-${d.vdev}` : `/var/lib/xen/images/${id}-${d.vdev}.img`;
}

/** Records go in the last quarter of each disk, clear of a file system at its start. */
export function recbaseMiB(diskBytes: number): number {
  return Math.max(1, Math.floor((diskBytes / MiB) * 0.75));
}

/** Where the guest's record `n` sits on a disk of `diskBytes` (see guest/init). */
export function recordOffset(diskBytes: number, n: number): number {
  return recbaseMiB(diskBytes) * MiB + n * 4096;
}

/** A lab MAC in Xen's own prefix, stable per id. */
export function labMac(id: string): string {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  const b = [(h >>> 16) & 0x7f, (h >>> 8) & 0xff, h & 0xff].map((x) => x.toString(16).padStart(2, '0'));
  return `00:16:3e:${b.join(':')}`;
}

/** The guest's xl config file, as an operator writes one. */
export function operatorConfig(g: LabGuest): string {
  const [d1, d2] = g.disks;
  const cmdline = [
    guestAppend({ rate: g.rate ?? 5, recbase: recbaseMiB(d1!.bytes) }).replace('console=ttyS0', 'console=hvc0'),
    ...(d2 ? [`ferry.recbase2=${recbaseMiB(d2.bytes)}`] : []),
    'rdinit=/xen-init',
  ].join(' ');
  const disks = g.disks.map((d) => `    'format=raw, vdev=${d.vdev}, access=rw, target=${labDiskPath(g.id, d)}',`);
  return [
    `# ${g.id}: a lab guest, written the way an operator writes an xl config`,
    `name = "${g.id}"`,
    `type = "${g.type ?? 'pvh'}"`,
    `memory = ${g.memoryMiB ?? 128}`,
    'vcpus = 1',
    `kernel = "${DOM0_GUEST_KERNEL}"`,
    `ramdisk = "${DOM0_GUEST_INITRD}"`,
    `cmdline = "${cmdline}"`,
    'disk = [',
    ...disks,
    ']',
    `vif = [ 'mac=${g.mac ?? labMac(g.id)},bridge=xenbr0' ]`,
    'on_crash = "preserve"',
    '',
  ].join('\n');
}
