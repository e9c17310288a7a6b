// What xl says about a running domain (`xl list -l`: libxl's JSON of the domain's configuration)
// and the xl config file Ferry hands `xl migrate -C` when a disk lives at another path on the
// destination. Pure functions: the driver runs the commands.
import { FerryError, ErrorTypes } from '../../shared/errors.js';

/** The parts of libxl's domain configuration JSON that Ferry reads. */
export interface XlDomainJson {
  domid: number;
  config: {
    c_info: { type?: string; name: string; uuid?: string };
    b_info: {
      max_vcpus?: number;
      max_memkb?: number;
      target_memkb?: number;
      kernel?: string;
      ramdisk?: string;
      cmdline?: string;
      /** Xen before 4.10 kept the PV boot fields here. */
      type?: { pv?: { kernel?: string; ramdisk?: string; cmdline?: string } };
    };
    disks?: Array<{ pdev_path?: string; vdev?: string; backend?: string; format?: string; readwrite?: number; is_cdrom?: number; script?: string }>;
    nics?: Array<{ mac?: string; bridge?: string; model?: string; ip?: string; script?: string; type?: string }>;
    on_poweroff?: string;
    on_reboot?: string;
    on_crash?: string;
  };
}

export function parseXlListLong(out: string): XlDomainJson[] {
  let v: unknown;
  try {
    v = JSON.parse(out);
  } catch {
    throw new FerryError(ErrorTypes.DriverError, `xl list -l printed something that is not JSON: ${out.slice(0, 200)}`);
  }
  if (!Array.isArray(v)) throw new FerryError(ErrorTypes.DriverError, 'xl list -l did not print a JSON array');
  return v.filter((d): d is XlDomainJson => typeof d === 'object' && d !== null && typeof (d as XlDomainJson).config?.c_info?.name === 'string');
}

export interface XlBoot {
  kernel?: string;
  ramdisk?: string;
  cmdline?: string;
}

export function bootOf(d: XlDomainJson): XlBoot {
  const b = d.config.b_info;
  return { kernel: b.kernel ?? b.type?.pv?.kernel, ramdisk: b.ramdisk ?? b.type?.pv?.ramdisk, cmdline: b.cmdline ?? b.type?.pv?.cmdline };
}

/** Values go into xl's config language inside double quotes: refuse what could break out. */
function q(what: string, v: string): string {
  if (/["\\\n\r\0]/.test(v)) throw new FerryError(ErrorTypes.BadInput, `${what} ${JSON.stringify(v)} contains a quote, backslash or line break`);
  return `"${v}"`;
}

/** libxl's action names (`restart`, `coredump_destroy`) in xl's config spelling. */
const action = (a: string) => a.replace(/_/g, '-');

/**
 * The domain's configuration as an xl config file, with each disk's target replaced by
 * `targets[vdev]`: what `xl migrate -C` sends when the destination keeps a disk elsewhere. It
 * carries what Ferry imports (type, memory, vCPUs, boot, disks, vifs, on_* actions, UUID);
 * docs/xen.md says so.
 */
export function xlConfigFor(d: XlDomainJson, targets: Record<string, string>): string {
  const c = d.config;
  const b = c.b_info;
  const boot = bootOf(d);
  const lines = [`name = ${q('name', c.c_info.name)}`];
  if (c.c_info.uuid) lines.push(`uuid = ${q('uuid', c.c_info.uuid)}`);
  if (c.c_info.type) lines.push(`type = ${q('type', c.c_info.type)}`);
  if (b.target_memkb) lines.push(`memory = ${Math.floor(b.target_memkb / 1024)}`);
  if (b.max_memkb) lines.push(`maxmem = ${Math.floor(b.max_memkb / 1024)}`);
  if (b.max_vcpus) lines.push(`vcpus = ${b.max_vcpus}`, `maxvcpus = ${b.max_vcpus}`);
  if (boot.kernel) lines.push(`kernel = ${q('kernel', boot.kernel)}`);
  if (boot.ramdisk) lines.push(`ramdisk = ${q('ramdisk', boot.ramdisk)}`);
  if (boot.cmdline) lines.push(`cmdline = ${q('cmdline', boot.cmdline)}`);
  const disks = (c.disks ?? []).map((x) => {
    const vdev = x.vdev ?? '';
    const target = targets[vdev] ?? x.pdev_path;
    if (!target) throw new FerryError(ErrorTypes.BadInput, `disk ${vdev} of ${c.c_info.name} has no target`);
    const parts = [`format=${x.format ?? 'raw'}`, `vdev=${vdev}`, `access=${x.readwrite === 0 ? 'ro' : 'rw'}`];
    if (x.backend && x.backend !== 'unknown') parts.push(`backendtype=${x.backend}`);
    if (x.script) parts.push(`script=${x.script}`);
    if (x.is_cdrom) parts.push('devtype=cdrom');
    return q(`disk ${vdev}`, [...parts, `target=${target}`].join(', '));
  });
  lines.push(`disk = [ ${disks.join(', ')} ]`);
  const vifs = (c.nics ?? []).map((n) =>
    q(
      'vif',
      [n.mac && `mac=${n.mac}`, n.bridge && `bridge=${n.bridge}`, n.model && `model=${n.model}`, n.ip && `ip=${n.ip}`, n.script && `script=${n.script}`]
        .filter(Boolean)
        .join(','),
    ),
  );
  if (vifs.length) lines.push(`vif = [ ${vifs.join(', ')} ]`);
  for (const k of ['on_poweroff', 'on_reboot', 'on_crash'] as const) {
    const a = c[k];
    if (a) lines.push(`${k} = ${q(k, action(a))}`);
  }
  return lines.join('\n') + '\n';
}
