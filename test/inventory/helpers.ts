// Shared fixtures of the inventory tests: a fresh SQLite file in a temp dir and a small cluster.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { InstanceSpec } from '../../src/shared/instance.js';
import { openInventory, type Inventory } from '../../src/inventory/index.js';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-inv-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function spec(id: string, over: Partial<InstanceSpec> = {}): InstanceSpec {
  return {
    id,
    hypervisor: 'qemu',
    vcpus: 1,
    memoryMiB: 128,
    disks: [{ vdev: 'vda', kind: 'file', path: `/var/lib/ferry/disks/${id}.raw`, format: 'raw', bytes: 64 << 20 }],
    ...over,
  };
}

/** node-a (roomy) and node-b (4 vCPU, 1024 MiB, 1 GiB disk), both qemu, plus xen node-x. */
export function seedCluster(path: string): Inventory {
  const inv = openInventory(path);
  inv.addNode({ name: 'node-a', hypervisor: 'qemu', controlAddress: '127.0.0.1:7233', dataAddress: '127.0.0.1', capacity: { vcpus: 64, memoryMiB: 65536, diskBytes: 2 ** 40 } });
  inv.addNode({ name: 'node-b', hypervisor: 'qemu', controlAddress: '127.0.0.1:7233', dataAddress: '127.0.0.2', capacity: { vcpus: 4, memoryMiB: 1024, diskBytes: 1 << 30 } });
  inv.addNode({ name: 'node-x', hypervisor: 'xen', controlAddress: '127.0.0.1:7233', dataAddress: '127.0.0.3', capacity: { vcpus: 4, memoryMiB: 4096, diskBytes: 2 ** 34 } });
  return inv;
}
