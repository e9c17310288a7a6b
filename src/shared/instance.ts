// What a host says about a guest: the domain's description that the inventory keeps and every
// activity passes around. Drivers fill it in from the hypervisor (`xl list -l`, a domain's XML, a
// QEMU process's arguments); nothing here is a lab setting. No Node built-ins: the workflow bundle
// imports this module.

/** The hypervisors Ferry has a driver for: QEMU processes it runs, Xen's xl, and libvirt's QEMU/KVM. */
export const HYPERVISOR_KINDS = ['qemu', 'xen', 'libvirt'] as const;
export type HypervisorKind = (typeof HYPERVISOR_KINDS)[number];

/** How the guest came to run: the labs' own guests say `ferry`; an operator's, how they made it. */
export type StartedBy = 'ferry' | 'xl create' | 'libvirt';

export interface DiskSpec {
  /** The guest's name for the disk (xvda, vda): the key every per-disk step uses. */
  vdev: string;
  /** Where it lives on its host: an image file, or an LVM logical volume. */
  kind: 'file' | 'lv';
  /** Its path on the host: the image file, or /dev/VG/LV. */
  path: string;
  format: 'raw' | 'qcow2';
  bytes: number;
}

export interface NicSpec {
  mac?: string;
  bridge?: string;
}

export interface InstanceSpec {
  id: string;
  hypervisor: HypervisorKind;
  vcpus: number;
  memoryMiB: number;
  /** Every disk of the guest, in the guest's order. */
  disks: DiskSpec[];
  nics?: NicSpec[];
  /** Direct kernel boot: the domain's kernel, ramdisk and command line (PV, PVH; QEMU -kernel). */
  boot?: { kernel: string; initrd?: string; append?: string };
  /** xen: pv, pvh or hvm. */
  guestType?: 'pv' | 'pvh' | 'hvm';
  startedBy?: StartedBy;
  /** Host port forwarded to the guest's request port on the node's lab address (qemu lab). */
  servicePort?: number;
  /** Free-form driver settings. */
  extra?: Record<string, unknown>;
}

/** Bytes of all the guest's disks: what it needs of a destination's storage. */
export function totalDiskBytes(spec: Pick<InstanceSpec, 'disks'>): number {
  return spec.disks.reduce((n, d) => n + d.bytes, 0);
}

/** The guest's disk named `vdev`; a name the spec does not hold is a caller's bug. */
export function diskOf(spec: Pick<InstanceSpec, 'id' | 'disks'>, vdev: string): DiskSpec {
  const d = spec.disks.find((x) => x.vdev === vdev);
  if (!d) throw new Error(`instance ${spec.id} has no disk ${vdev}`);
  return d;
}

/** Disk names end up in file and device names: letters and digits only (xvda, vdb, sda1). */
export const VDEV_PATTERN = /^[a-z][a-z0-9]{1,15}$/;
