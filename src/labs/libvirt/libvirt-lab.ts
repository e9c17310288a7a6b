// The libvirt lab: the QEMU lab's two namespaces, Temporal, inventory and workers, with a libvirtd
// on each node (libvirt-hosts.ts) and the node workers running the libvirt driver beside it.
// Guests are the operator's: the test writes a domain XML and runs `virsh define` and `virsh start`
// on a host; Ferry learns of them from `ferry node sync`.
import { execFile } from 'node:child_process';
import { copyFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startQemuLab, type LabOptions } from '../qemu-lab.js';
import { ferryCommand } from '../lab-common.js';
import { ensureLabNetwork, labNodes } from '../lab-network.js';
import { LIBVIRT_GUEST_FORWARD_PORT, startLibvirtHosts } from './libvirt-hosts.js';
import { migrationWorkflowId } from '../../shared/names.js';
import type { SyncNodeResult } from '../../shared/messages.js';

/** Where each lab host keeps the guest kernel and initramfs (the same path on both, as operators do). */
export const LAB_BOOT_DIR = '/var/lib/libvirt/boot';
export const LAB_IMAGE_DIR = '/var/lib/libvirt/images';
/** node-a keeps incoming disks here instead (its `node.libvirt.pathMap`): a destination laid out differently. */
export const LAB_MAPPED_DIR = '/var/lib/libvirt/moved';

export async function startLibvirtLab(opts: LabOptions = {}) {
  const dir = opts.dir ?? '/var/tmp/ferry-libvirt-lab';
  const log = opts.log ?? (() => undefined);
  // The network first (the hosts' bridges live in the node namespaces), then the daemons.
  await ensureLabNetwork();
  const nodes = Object.values(labNodes);
  // Fresh libvirtds: Ferry's per-instance state of an earlier run (one killed half-way) is stale.
  await new Promise((r) => execFile('pkill', ['-KILL', '-f', `qemu-nbd .*${dir}/nodes/`], r));
  for (const n of nodes) await rm(join(dir, 'nodes', n.name, 'libvirt'), { recursive: true, force: true });
  const hosts = await startLibvirtHosts(dir, nodes, log);
  let base: Awaited<ReturnType<typeof startQemuLab>>;
  try {
    base = await startQemuLab({
      ...opts,
      dir,
      hypervisor: 'libvirt',
      nodeSettings: { 'node-a': { libvirt: { pathMap: [{ from: `${LAB_IMAGE_DIR}/`, to: `${LAB_MAPPED_DIR}/` }] } } },
      launchOnNode: (node) => (cmd, args, o) => hosts.spawnOn(node, cmd, args, o),
    });
  } catch (e) {
    await hosts.close();
    throw e;
  }
  // Operators keep the same kernel on every host; the lab copies the guest image to each.
  for (const n of nodes) {
    await copyFile(base.image.kernel, hosts.outside(n.name, `${LAB_BOOT_DIR}/vmlinuz`));
    await copyFile(base.image.initrd, hosts.outside(n.name, `${LAB_BOOT_DIR}/initrd`));
  }

  const lab = {
    ...base,
    hosts,
    bootFiles: { kernel: `${LAB_BOOT_DIR}/vmlinuz`, initrd: `${LAB_BOOT_DIR}/initrd` },

    /** The `ferry` CLI against this lab's config. */
    ferry(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
      const [cmd, ...pre] = ferryCommand();
      return new Promise((resolve) => {
        execFile(cmd!, [...pre, ...args], { encoding: 'utf8', env: { ...process.env, FERRY_CONFIG: base.configPath } }, (err, stdout, stderr) =>
          resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
    },

    /** `ferry node sync NODE --json`. */
    async sync(node: string): Promise<SyncNodeResult> {
      const r = await lab.ferry(['node', 'sync', node, '--json']);
      if (r.code !== 0) throw new Error(`ferry node sync ${node} exited ${r.code}: ${r.stderr.trim()}`);
      return JSON.parse(r.stdout.trim().split('\n').pop()!) as SyncNodeResult;
    },

    /** Where the guest's request port answers from the root namespace, per node (one guest per node at a time). */
    guestAddresses() {
      return nodes.map((n) => ({ node: n.name, host: n.mgmtAddress, port: LIBVIRT_GUEST_FORWARD_PORT }));
    },

    /** Domain names libvirt has on a host (running or not). */
    async domains(node: string): Promise<{ running: string[]; all: string[] }> {
      const v = hosts.host(node).virsh;
      const names = async (args: string[]) => (await v.run(args)).split('\n').map((s) => s.trim()).filter(Boolean);
      return { running: await names(['list', '--name']), all: await names(['list', '--all', '--name']) };
    },

    /** What of an instance is on a host: domains, image files named after it, Ferry's state, qemu-nbd. */
    async leftovers(id: string, node: string): Promise<string[]> {
      const found: string[] = [];
      for (const d of (await lab.domains(node)).all) if (d === id) found.push(`domain ${d}`);
      for (const folder of [LAB_IMAGE_DIR, LAB_MAPPED_DIR]) {
        const images = await readdir(hosts.outside(node, folder)).catch(() => [] as string[]);
        for (const f of images) if (f.startsWith(`${id}-`)) found.push(`${folder}/${f}`);
      }
      const state = await readdir(join(base.nodeStateDir(node), 'libvirt')).catch(() => [] as string[]);
      for (const f of state) if (f === id) found.push(`ferry state ${f}`);
      const nbd = await new Promise<string>((r) => execFile('pgrep', ['-af', `qemu-nbd.*/${id}/`], (_e, out) => r(out ?? '')));
      if (nbd.trim()) found.push(`qemu-nbd ${nbd.trim()}`);
      return found.sort();
    },

    /** Removes a guest from both hosts (domains, disk images, Ferry's state) and the inventory. */
    async destroyGuest(id: string) {
      await base.client.workflow.getHandle(migrationWorkflowId(id)).terminate('lab: guest destroyed').catch(() => undefined);
      for (const r of base.inventory.listReservations({ live: true })) if (r.instanceId === id) base.inventory.release(r.migrationId);
      for (const n of nodes) {
        const v = hosts.host(n.name).virsh;
        await v.run(['destroy', '--domain', id]).catch(() => undefined);
        await v.run(['undefine', '--domain', id]).catch(() => undefined);
        for (const folder of [LAB_IMAGE_DIR, LAB_MAPPED_DIR]) {
          for (const f of await readdir(hosts.outside(n.name, folder)).catch(() => [] as string[])) {
            if (f.startsWith(`${id}-`)) await rm(join(hosts.outside(n.name, folder), f), { force: true });
          }
        }
        await rm(join(base.nodeStateDir(n.name), 'libvirt', id), { recursive: true, force: true });
      }
      if (base.inventory.findInstance(id)) base.inventory.removeInstance(id);
    },

    /** Stops everything; the domains go with their libvirtds (there is nothing to keep). */
    async close(_o: { killGuests?: boolean } = {}) {
      await base.close({ killGuests: false });
      await hosts.close();
    },
  };
  return lab;
}

export type LibvirtLab = Awaited<ReturnType<typeof startLibvirtLab>>;
