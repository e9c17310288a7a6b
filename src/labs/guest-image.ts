// Builds the lab guest: the Debian kernel (from apt, never from elsewhere) and a busybox-static
// initramfs whose /init is src/labs/guest/init. Everything is built on the host and cached under
// `.cache/guest` (git-ignored), so no binary is ever committed.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, readdirSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { FerryError, ErrorTypes } from '../shared/errors.js';
import { exists } from '../drivers/file-exists.js';

const execFileP = promisify(execFile);

/** Modules the initramfs carries, in the order /init insmods them (no modules.dep after dpkg -x). */
export const GUEST_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'virtio_blk',
  'failover',
  'net_failover',
  'virtio_net',
] as const;

const BUSYBOX = '/bin/busybox';
const here = dirname(fileURLToPath(import.meta.url));

/** The guest scripts live in the source tree; from dist/ we look back into src/. */
async function guestScriptDir(): Promise<string> {
  for (const d of [join(here, 'guest'), resolve(here, '../../src/labs/guest')]) {
    if (await exists(join(d, 'init'))) return d;
  }
  throw new FerryError(ErrorTypes.DriverError, `guest init script not found next to ${here}`);
}


async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { cwd, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new FerryError(ErrorTypes.DriverError, `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim()}`);
  }
}

/** `linux-image-amd64` is a metapackage: the real image package is its dependency. */
async function kernelPackageName(): Promise<string> {
  const out = await run('apt-cache', ['depends', 'linux-image-amd64']);
  const m = /Depends:\s+(linux-image-[0-9][^\s]*-amd64)/.exec(out);
  if (!m) throw new FerryError(ErrorTypes.DriverError, `cannot resolve linux-image-amd64 (apt-cache said: ${out.trim()})`);
  return m[1];
}

async function downloadKernelDeb(workDir: string): Promise<string> {
  const tryOnce = async () => {
    const pkg = await kernelPackageName();
    await run('apt-get', ['download', pkg], workDir);
  };
  try {
    await tryOnce();
  } catch {
    // Most often: no package lists yet (fresh machine), or stale ones pointing at a removed version.
    await run('apt-get', ['update']);
    await tryOnce();
  }
  const deb = (await readdir(workDir)).find((f) => f.startsWith('linux-image-') && f.endsWith('.deb'));
  if (!deb) throw new FerryError(ErrorTypes.DriverError, 'apt-get download produced no linux-image .deb');
  return join(workDir, deb);
}

async function findFiles(root: string, match: (name: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  // Sync: Node 20's promise readdir with `recursive` can leave its promise unsettled.
  for (const ent of readdirSync(root, { withFileTypes: true, recursive: true })) {
    if (ent.isFile() && match(ent.name)) out.push(join(ent.parentPath ?? (ent as unknown as { path: string }).path, ent.name));
  }
  return out;
}

/** Extracts vmlinuz and the needed modules into `kernelDir` (vmlinuz + modules/NAME.ko). */
async function fetchKernel(kernelDir: string): Promise<void> {
  const work = await mkdtemp(join(dirname(kernelDir), 'kernel-work-'));
  try {
    // apt-get download drops privileges to _apt when it can; a world-writable dir keeps it quiet.
    await chmod(work, 0o777);
    const deb = await downloadKernelDeb(work);
    const root = join(work, 'root');
    await run('dpkg', ['-x', deb, root]);
    const vmlinuz = (await readdir(join(root, 'boot'))).find((f) => f.startsWith('vmlinuz-'));
    if (!vmlinuz) throw new FerryError(ErrorTypes.DriverError, `no vmlinuz in ${deb}`);
    const staging = `${kernelDir}.tmp`;
    await rm(staging, { recursive: true, force: true });
    await mkdir(join(staging, 'modules'), { recursive: true });
    await copyFile(join(root, 'boot', vmlinuz), join(staging, 'vmlinuz'));
    const kos = await findFiles(join(root, 'lib', 'modules'), (n) => n.endsWith('.ko') || n.endsWith('.ko.xz'));
    for (const mod of GUEST_MODULES) {
      // Module file names use dashes or underscores inconsistently; compare normalized.
      const hit = kos.find((p) => {
        const base = p.slice(p.lastIndexOf('/') + 1).replace(/\.ko(\.xz)?$/, '').replace(/-/g, '_');
        return base === mod;
      });
      if (!hit) throw new FerryError(ErrorTypes.DriverError, `module ${mod} not found in ${deb}`);
      if (hit.endsWith('.xz')) {
        // busybox insmod cannot read compressed modules: unpack with busybox's own xz.
        const raw = await execFileP(BUSYBOX, ['xz', '-dc', hit], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
        await writeFile(join(staging, 'modules', `${mod}.ko`), raw.stdout);
      } else {
        await copyFile(hit, join(staging, 'modules', `${mod}.ko`));
      }
    }
    await rm(kernelDir, { recursive: true, force: true });
    await rename(staging, kernelDir);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Writes a newc cpio of `dir` with the `cpio` tool; the file list goes through stdin, no shell. */
/** Packs a directory into a newc cpio archive (an initramfs), every file owned by root. */
export async function packCpio(dir: string, outFile: string): Promise<void> {
  const entries = ['.'];
  // Sync: Node 20's promise readdir with `recursive` can leave its promise unsettled.
  for (const ent of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const parent = ent.parentPath ?? (ent as unknown as { path: string }).path;
    entries.push(relative(dir, join(parent, ent.name)));
  }
  await new Promise<void>((resolveP, reject) => {
    const child = spawn('cpio', ['--quiet', '-o', '-H', 'newc', '--owner=0:0'], { cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
    const out = createWriteStream(outFile);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.pipe(out);
    child.on('error', reject);
    child.on('close', (code) => {
      out.on('close', () => (code === 0 ? resolveP() : reject(new FerryError(ErrorTypes.DriverError, `cpio failed: ${stderr}`))));
      out.end();
    });
    child.stdin.end(entries.join('\n') + '\n');
  });
}

async function buildInitrd(kernelDir: string, scriptDir: string, outFile: string): Promise<void> {
  const staging = await mkdtemp(`${outFile}.staging-`);
  try {
    for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'tmp', 'run', 'lib/modules', 'usr/bin', 'usr/sbin']) {
      await mkdir(join(staging, d), { recursive: true });
    }
    await copyFile(BUSYBOX, join(staging, 'bin', 'busybox'));
    await chmod(join(staging, 'bin', 'busybox'), 0o755);
    // /init's shebang needs /bin/sh before `busybox --install` runs.
    await symlink('busybox', join(staging, 'bin', 'sh'));
    for (const f of await readdir(scriptDir)) {
      const dest = f === 'init' ? join(staging, 'init') : join(staging, 'bin', f);
      await copyFile(join(scriptDir, f), dest);
      await chmod(dest, 0o755);
    }
    for (const mod of GUEST_MODULES) {
      await copyFile(join(kernelDir, 'modules', `${mod}.ko`), join(staging, 'lib', 'modules', `${mod}.ko`));
    }
    await writeFile(join(staging, 'lib', 'modules', 'order'), GUEST_MODULES.join('\n') + '\n');
    const tmp = `${outFile}.tmp`;
    await packCpio(staging, tmp);
    await rename(tmp, outFile);
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
}

/**
 * Returns the lab guest's kernel and initramfs, building them once. The initramfs name carries a
 * hash of the guest scripts, so editing them rebuilds it while the kernel stays cached.
 */
export async function ensureGuestImage(cacheDir = '.cache/guest'): Promise<{ kernel: string; initrd: string }> {
  const dir = resolve(cacheDir);
  await mkdir(dir, { recursive: true });
  const kernelDir = join(dir, 'kernel');
  const kernel = join(kernelDir, 'vmlinuz');
  if (!(await exists(kernel))) await fetchKernel(kernelDir);

  const scriptDir = await guestScriptDir();
  const h = createHash('sha256');
  for (const f of (await readdir(scriptDir)).sort()) {
    h.update(f).update('\0').update(await readFile(join(scriptDir, f))).update('\0');
  }
  h.update(GUEST_MODULES.join(','));
  const initrd = join(dir, `initrd-${h.digest('hex').slice(0, 16)}.cpio`);
  if (!(await exists(initrd))) await buildInitrd(kernelDir, scriptDir, initrd);
  return { kernel, initrd };
}

/** Kernel command line for the lab guest's workload (see src/labs/guest/init). */
export function guestAppend(opts: { rate?: number; recbase?: number; burst?: number; span?: number; spanbase?: number } = {}): string {
  const parts = ['console=ttyS0', 'panic=-1', 'quiet', 'loglevel=3'];
  if (opts.rate !== undefined) parts.push(`ferry.rate=${opts.rate}`);
  if (opts.recbase !== undefined) parts.push(`ferry.recbase=${opts.recbase}`);
  if (opts.burst !== undefined) parts.push(`ferry.burst=${opts.burst}`);
  if (opts.span !== undefined) parts.push(`ferry.span=${opts.span}`);
  if (opts.spanbase !== undefined) parts.push(`ferry.spanbase=${opts.spanbase}`);
  for (const p of parts.slice(4)) {
    if (!/^ferry\.[a-z]+=\d+$/.test(p)) throw new FerryError(ErrorTypes.BadInput, `bad guest option ${p}: values are whole numbers`);
  }
  return parts.join(' ');
}
