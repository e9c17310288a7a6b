// Picks the hypervisor driver of this node from the config.
import type { FerryConfig } from '../config/index.js';
import type { HypervisorDriver } from './driver.js';

export async function createDriver(cfg: FerryConfig): Promise<HypervisorDriver> {
  const node = cfg.node!;
  const kind = node.hypervisor ?? 'qemu';
  switch (kind) {
    case 'qemu': {
      const { createQemuDriver } = await import('./qemu/qemu-driver.js');
      return createQemuDriver({ stateDir: node.stateDir });
    }
    case 'xen': {
      // The node worker runs in the Xen host's dom0 and drives `xl` there (docs/xen.md).
      const { createXenDriver } = await import('./xen/xen-driver.js');
      const { LocalExecutor } = await import('./xen/executor.js');
      return createXenDriver({ executor: new LocalExecutor(), stateDir: node.stateDir });
    }
    default:
      throw new Error(`no driver for hypervisor ${String(kind)}`);
  }
}
