// KVM where it works, TCG where it does not. /dev/kvm existing is not enough: under some nested
// hypervisors (this project's CI machines, lab-notes) KVM opens and runs real-mode code, but every
// instruction traps and a kernel never gets past its decompressor. So the probe runs a 100-million
// iteration loop from a 64 KiB BIOS image and exits through isa-debug-exit: real KVM finishes it
// in well under a second, the broken kind does not finish in PROBE_TIMEOUT_MS.
import { execFile } from 'node:child_process';
import { access, mkdtemp, rm, writeFile, constants } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export type Accelerator = 'kvm' | 'tcg';

const PROBE_TIMEOUT_MS = 3000;
/** isa-debug-exit turns the byte 0x42 into QEMU's exit status (0x42 << 1) | 1. */
const PROBE_EXIT = (0x42 << 1) | 1;

/** The probe's BIOS: at the reset vector, `mov ecx, 100000000; a32 loop $; mov al, 0x42; out 0xf4, al; hlt`. */
export function probeBios(): Buffer {
  const image = Buffer.alloc(65536, 0xf4);
  Buffer.from([0x66, 0xb9, 0x00, 0xe1, 0xf5, 0x05, 0x67, 0xe2, 0xfd, 0xb0, 0x42, 0xe6, 0xf4, 0xf4]).copy(image, 0xfff0);
  return image;
}

/** Whether QEMU runs guest code under KVM at a usable speed on this host. */
export async function kvmUsable(qemuBinary = 'qemu-system-x86_64'): Promise<boolean> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
  } catch {
    return false;
  }
  const dir = await mkdtemp(join(tmpdir(), 'ferry-kvm-probe-'));
  try {
    const bios = join(dir, 'probe.bin');
    await writeFile(bios, probeBios());
    const args = ['-accel', 'kvm', '-machine', 'pc', '-cpu', 'qemu64', '-bios', bios, '-display', 'none', '-no-user-config', '-nodefaults', '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04'];
    const code = await new Promise<number | null>((resolve) => {
      execFile(qemuBinary, args, { timeout: PROBE_TIMEOUT_MS, killSignal: 'SIGKILL' }, (err) => {
        resolve(err ? ((err as { code?: number | string }).code as number | null) ?? null : 0);
      });
    });
    return code === PROBE_EXIT;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const picked = new Map<string, Promise<Accelerator>>();

/** The accelerator QEMU should use here, probed once per binary and process. */
export function pickAccelerator(qemuBinary = 'qemu-system-x86_64'): Promise<Accelerator> {
  let p = picked.get(qemuBinary);
  if (!p) {
    p = kvmUsable(qemuBinary).then((ok) => (ok ? 'kvm' : 'tcg'));
    picked.set(qemuBinary, p);
  }
  return p;
}
