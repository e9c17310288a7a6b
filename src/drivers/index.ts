// Picks the hypervisor driver of this node from the config.
import { readFile } from 'node:fs/promises';
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
      // In dom0 the worker runs `xl` itself; elsewhere it reaches dom0 over SSH (docs/xen.md).
      const { createXenDriver } = await import('./xen/xen-driver.js');
      const { LocalExecutor, ReconnectingSshExecutor } = await import('./xen/executor.js');
      const xen = node.xen;
      const executor = xen?.ssh
        ? new ReconnectingSshExecutor({
            host: xen.ssh.host,
            port: xen.ssh.port,
            username: xen.ssh.user,
            privateKey: await readFile(xen.ssh.keyFile),
            knownHostsFile: xen.ssh.knownHostsFile,
          })
        : new LocalExecutor();
      // Fail at start on a wrong key or host key, not at the first migration.
      await executor.run('true', []);
      return createXenDriver({
        executor,
        stateDir: xen?.stateDir ?? '/var/lib/ferry/xen',
        migrationAddress: xen?.migrationAddress,
        migrateSshCommand: xen?.migrateSshCommand,
        storage: { volumeGroup: xen?.volumeGroup, pathMap: xen?.pathMap },
      });
    }
    case 'libvirt': {
      const { createLibvirtDriver } = await import('./libvirt/libvirt-driver.js');
      const driver = createLibvirtDriver({ stateDir: `${node.stateDir}/libvirt`, socket: node.libvirt?.socket, pathMap: node.libvirt?.pathMap });
      // Fail at start when libvirtd is not there, not at the first migration.
      await driver.virsh.run(['version']);
      return driver;
    }
    default:
      throw new Error(`no driver for hypervisor ${String(kind)}`);
  }
}
