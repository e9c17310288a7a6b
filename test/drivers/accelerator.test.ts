// The KVM probe (src/drivers/qemu/accelerator.ts): its BIOS program must really reach the exit
// port (checked under TCG, which always works), so a probe that times out under KVM means KVM is
// unusable, not that the program is wrong.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { kvmUsable, pickAccelerator, probeBios } from '../../src/drivers/qemu/accelerator.js';
import { qemuArgs } from '../../src/drivers/qemu/qemu-process.js';

describe('accelerator probe', () => {
  it('runs its loop to the exit port under TCG (status (0x42 << 1) | 1)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'probe-test-'));
    try {
      await writeFile(join(dir, 'bios'), probeBios());
      const code = await new Promise<number | null>((resolve) =>
        execFile('qemu-system-x86_64', ['-accel', 'tcg', '-machine', 'pc', '-bios', join(dir, 'bios'), '-display', 'none', '-no-user-config', '-nodefaults', '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x04'], { timeout: 30_000 }, (err) =>
          resolve(err ? ((err as { code?: number }).code ?? null) : 0),
        ),
      );
      expect(code).toBe(133);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('picks one accelerator per host, the same every time, and QEMU is started with it', async () => {
    const usable = await kvmUsable();
    const a = await pickAccelerator();
    expect(a).toBe(usable ? 'kvm' : 'tcg');
    expect(await pickAccelerator()).toBe(a);
    const spec = { id: 'g1', hypervisor: 'qemu' as const, vcpus: 1, memoryMiB: 64, disks: [], boot: { kernel: '/k' } };
    const paths = { dir: '/s', qmp: '/s/q', nbd: '/s/n', pid: '/s/p', serial: '/s/c', log: '/s/l', tracking: '/s/t', rounds: '/s/r', memoryUri: '/s/m' };
    const args = qemuArgs({ spec, paths: paths as never, diskPath: '/d', incoming: false, accel: a });
    expect(args[args.indexOf('-accel') + 1]).toBe(a);
  });
});
