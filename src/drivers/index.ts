// Picks the hypervisor driver of this node from the config.
import type { FerryConfig } from '../config/index.js';
import type { HypervisorDriver } from './driver.js';

export async function createDriver(cfg: FerryConfig): Promise<HypervisorDriver> {
  const node = cfg.node!;
  const kind = (node as { hypervisor?: string }).hypervisor ?? 'qemu';
  switch (kind) {
    case 'qemu': {
      const { createQemuDriver } = await import('./qemu/qemu-driver.js');
      return createQemuDriver({ stateDir: node.stateDir });
    }
    default:
      throw new Error(`no driver for hypervisor ${kind} on this node yet`);
  }
}
