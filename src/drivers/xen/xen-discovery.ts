// `ferry node sync` on a Xen host: every domain `xl list -l` reports, described as an InstanceSpec
// from what libxl says (vCPUs, memory, type, boot, every disk with its size, every vif), or
// refused with the reason an operator can act on.
import type { Discovery } from '../driver.js';
import type { DiskSpec, InstanceSpec, NicSpec } from '../../shared/instance.js';
import { VDEV_PATTERN } from '../../shared/instance.js';
import { ID_PATTERN } from '../../shared/names.js';
import { runOk, type Executor } from './executor.js';
import { bootOf, parseXlListLong, type XlDomainJson } from './xl-domain.js';
import { lvInfo } from './lv-tracking.js';
import { diskSize } from './xen-storage.js';
import { trackerFor } from './trackers.js';

export class Refusal extends Error {}

/** The spec of one domain, or a Refusal naming why Ferry cannot move it. */
export async function describeDomain(ex: Executor, stateDir: string, d: XlDomainJson): Promise<InstanceSpec> {
  const c = d.config;
  const name = c.c_info.name;
  if (!ID_PATTERN.test(name)) throw new Refusal(`its name is not a Ferry instance id (1-63 of a-z, 0-9 and "-"): rename the domain to migrate it`);
  const type = c.c_info.type;
  if (type !== 'pv' && type !== 'pvh' && type !== 'hvm') throw new Refusal(`unknown guest type ${String(type)}`);
  if (type === 'hvm') throw new Refusal('it is an HVM guest: this driver moves PV and PVH guests (their disks are served by blkback)');
  const boot = bootOf(d);
  const disks: DiskSpec[] = [];
  for (const x of c.disks ?? []) {
    const vdev = x.vdev ?? '?';
    const path = x.pdev_path;
    if (!VDEV_PATTERN.test(vdev)) throw new Refusal(`disk ${vdev}: not a device name Ferry knows`);
    if (!path?.startsWith('/')) throw new Refusal(`disk ${vdev} has no host path`);
    if (x.is_cdrom) throw new Refusal(`disk ${vdev} is a CD-ROM: detach it (xl cd-eject) before migrating`);
    if ((x.format ?? 'raw') !== 'raw') throw new Refusal(`disk ${vdev} (${path}) is ${x.format}: Ferry moves raw disks`);
    if (x.backend && x.backend !== 'phy') throw new Refusal(`disk ${vdev} (${path}) is served by the ${x.backend} backend: Ferry tracks writes under blkback (phy) disks`);
    if (x.script) throw new Refusal(`disk ${vdev} (${path}) uses the hotplug script ${x.script}: Ferry moves plain LVs and image files`);
    const kindOut = await runOk(ex, 'stat', ['-L', '-c', '%F', '--', path]).catch(() => 'missing');
    let kind: DiskSpec['kind'];
    if (/regular/.test(kindOut)) kind = 'file';
    else if (/block/.test(kindOut) && (await lvInfo(ex, path))) kind = 'lv';
    else if (/block/.test(kindOut)) throw new Refusal(`disk ${vdev} is the block device ${path}, which is not an LVM logical volume: Ferry tracks LVs and image files`);
    else throw new Refusal(`disk ${vdev}: ${path} is ${kindOut.trim()}`);
    const disk: DiskSpec = { vdev, kind, path, format: 'raw', bytes: await diskSize(ex, { kind, path }) };
    const why = await trackerFor({ ex, dir: `${stateDir}/${name}`, id: name, disk }).refusal();
    if (why) throw new Refusal(`disk ${vdev}: ${why}`);
    disks.push(disk);
  }
  if (disks.length === 0) throw new Refusal('it has no disk');
  const nics: NicSpec[] = (c.nics ?? []).map((n) => ({ ...(n.mac ? { mac: n.mac.toLowerCase() } : {}), ...(n.bridge ? { bridge: n.bridge } : {}) }));
  const memKb = c.b_info.max_memkb ?? c.b_info.target_memkb ?? 0;
  return {
    id: name,
    hypervisor: 'xen',
    vcpus: c.b_info.max_vcpus ?? 1,
    memoryMiB: Math.ceil(memKb / 1024),
    disks,
    nics,
    guestType: type,
    ...(boot.kernel ? { boot: { kernel: boot.kernel, ...(boot.ramdisk ? { initrd: boot.ramdisk } : {}), ...(boot.cmdline ? { append: boot.cmdline } : {}) } } : {}),
    startedBy: 'xl create',
  };
}

/** Every domain but dom0 and xl's transient migration copies. */
export async function discoverDomains(ex: Executor, stateDir: string): Promise<Discovery> {
  const domains = parseXlListLong(await runOk(ex, 'xl', ['list', '-l']));
  const out: Discovery = { instances: [], refused: [] };
  for (const d of domains) {
    const name = d.config.c_info.name;
    if (d.domid === 0 || /--(incoming|migratedaway)$/.test(name)) continue;
    try {
      out.instances.push(await describeDomain(ex, stateDir, d));
    } catch (err) {
      if (!(err instanceof Refusal)) throw err;
      out.refused.push({ name, reason: err.message });
    }
  }
  return out;
}

/** libxl's JSON of one running domain. */
export async function domainJson(ex: Executor, name: string): Promise<XlDomainJson | undefined> {
  return parseXlListLong(await runOk(ex, 'xl', ['list', '-l', name])).find((d) => d.config.c_info.name === name);
}
