// The Xen lab's guest: the QEMU lab's workload (counter, fsync'ed records, request port 7000) as a
// PVH (or PV) domain, booted from the kernel and initramfs the lab puts on each dom0. The guest
// sits on its dom0's xenbr0 at 10.0.2.15: only that dom0 reaches it.
import type { InstanceSpec } from '../../drivers/driver.js';
import { guestAppend } from '../guest-image.js';
import { DOM0_GUEST_INITRD, DOM0_GUEST_KERNEL } from './xen-lab.js';

/** Per-instance state and destination disks on each dom0. */
export const XEN_STATE_DIR = '/var/lib/ferry/xen';
export const XEN_GUEST_ADDRESS = '10.0.2.15';
export const XEN_GUEST_PORT = 7000;

const MiB = 1024 * 1024;

export function xenGuestSpec(id: string, over: Partial<InstanceSpec> & { rate?: number } = {}): InstanceSpec {
  const { rate, ...rest } = over;
  const diskBytes = rest.diskBytes ?? 32 * MiB;
  const recbase = recbaseMiB(diskBytes);
  return {
    id,
    hypervisor: 'xen',
    vcpus: 1,
    memoryMiB: 256,
    diskBytes,
    diskPath: `${XEN_STATE_DIR}/disks/${id}.raw`,
    guestType: 'pvh',
    boot: {
      kernel: DOM0_GUEST_KERNEL,
      initrd: DOM0_GUEST_INITRD,
      append: `${guestAppend({ rate: rate ?? 5, recbase })} rdinit=/xen-init`.replace('console=ttyS0', 'console=hvc0'),
    },
    ...rest,
  };
}

/** Records go in the last quarter of the disk, clear of a file system at its start. */
function recbaseMiB(diskBytes: number): number {
  return Math.max(1, Math.floor((diskBytes / MiB) * 0.75));
}

/** Where the guest's record `n` sits on its disk (see guest/init). */
export function recordOffset(spec: InstanceSpec, n: number): number {
  return recbaseMiB(spec.diskBytes) * MiB + n * 4096;
}
