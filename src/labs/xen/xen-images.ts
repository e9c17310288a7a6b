// Builds what the Xen lab boots, once, into the git-ignored cache `.cache/xen/`: a Debian dom0 root
// tree (debootstrap, reused when present), the Xen hypervisor unpacked from it, an ext4 image of
// the tree (mkfs.ext4 -d: no loop mounts), and the PVH guest's kernel + initramfs.
import { execFile, spawn } from 'node:child_process';
import { createWriteStream, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { access, chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { ensureGuestImage, packCpio } from '../guest-image.js';
import { exists } from '../../drivers/file-exists.js';

const execFileP = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, '../../..');

/** Packages of the dom0 tree (lab-notes: xen-utils, sshd, and dm-era's userland for dirty tracking). */
export const DOM0_PACKAGES = [
  'xen-utils-4.17',
  'xen-hypervisor-4.17-amd64',
  'openssh-server',
  'iproute2',
  'kmod',
  'linux-image-amd64',
  'busybox',
  'procps',
  'dmsetup',
  'thin-provisioning-tools',
  // Operators' guests: disks on LVM logical volumes, and blktrace for write tracking under a
  // loop-backed file disk (docs/xen.md).
  'lvm2',
  'blktrace',
];

/** Guest modules for a Xen PVH guest, in insmod order (dpkg-style trees have no modules.dep). */
const XEN_GUEST_MODULES = ['xen-blkfront', 'xen-netfront'];

export interface XenImages {
  /** Uncompressed Xen hypervisor (QEMU's multiboot loader cannot read the .gz). */
  xen: string;
  dom0Kernel: string;
  dom0Initrd: string;
  /** ext4 image of the dom0 tree; booted with snapshot=on so it never changes. */
  rootImage: string;
  guestKernel: string;
  guestInitrd: string;
}


async function run(cmd: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new FerryError(ErrorTypes.DriverError, `${cmd} ${args.join(' ')} failed: ${(e.stderr || e.message).trim().slice(-2000)}`);
  }
}

/**
 * The Debian mirror this machine's apt already uses for bookworm: the dom0 tree comes from the same
 * place as every other package, and no address is baked into the code.
 */
async function aptMirror(): Promise<string> {
  const files = ['/etc/apt/sources.list'];
  try {
    for (const f of await readdir('/etc/apt/sources.list.d')) files.push(join('/etc/apt/sources.list.d', f));
  } catch {
    // no sources.list.d
  }
  for (const f of files) {
    let text = '';
    try {
      text = await readFile(f, 'utf8');
    } catch {
      continue;
    }
    // deb822 stanzas (`URIs:` with `Suites: bookworm`) and one-line `deb URI bookworm main`.
    for (const stanza of text.split(/\n\s*\n/)) {
      const uri = /^URIs:\s*(\S+)/m.exec(stanza)?.[1];
      if (uri && /^Suites:.*\bbookworm\b(?!-)/m.test(stanza) && /^Components:.*\bmain\b/m.test(stanza)) return uri;
    }
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s+.*\bmain\b/m.exec(text);
    if (line) return line[1]!;
  }
  throw new FerryError(ErrorTypes.DriverError, 'no Debian bookworm source in /etc/apt: debootstrap needs a mirror');
}

/**
 * Runs debootstrap with its output in `logFile`. A mirror that stops answering leaves wget waiting
 * for many minutes per file, so a run that prints nothing for `stallMs` is killed: one stuck
 * download then costs minutes, not the whole test run.
 */
function debootstrap(args: string[], logFile: string, stallMs: number, log: (s: string) => void): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const out = createWriteStream(logFile, { flags: 'a' });
    const child = spawn('debootstrap', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const t0 = Date.now();
    let last = '';
    let stalled = false;
    let watchdog = setTimeout(onStall, stallMs);
    function onStall() {
      stalled = true;
      child.kill('SIGKILL');
    }
    const onData = (d: Buffer) => {
      out.write(d);
      clearTimeout(watchdog);
      watchdog = setTimeout(onStall, stallMs);
      const line = d.toString().trim().split('\n').pop() ?? '';
      // The stage, not every package: "I: Retrieving", "I: Unpacking", "I: Configuring".
      const stage = /^I: (\w+)/.exec(line)?.[1];
      if (stage && stage !== last) {
        last = stage;
        log(`xen lab: debootstrap ${stage.toLowerCase()} (${Math.round((Date.now() - t0) / 1000)} s)`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => reject(new FerryError(ErrorTypes.DriverError, `debootstrap could not start: ${err.message}`)));
    child.on('close', (code) => {
      clearTimeout(watchdog);
      out.end();
      if (code === 0) return resolvePromise();
      const why = stalled ? `printed nothing for ${stallMs / 1000} s (a stuck download?)` : `exited with ${code}`;
      reject(new FerryError(ErrorTypes.DriverError, `debootstrap ${why}; see ${logFile}`));
    });
  });
}

/** The debootstrap tree, built once (about 3 min, 850 MiB); a failed or stuck run is tried again once. */
export async function ensureDom0Tree(cacheDir: string, log: (s: string) => void = () => undefined): Promise<string> {
  const tree = join(cacheDir, 'rootfs');
  // The marker names the package list: a tree built for another list is built again.
  const marker = join(tree, `.ferry-complete-${createHash('sha256').update(DOM0_PACKAGES.join(',')).digest('hex').slice(0, 12)}`);
  if (await exists(marker)) return tree;
  try {
    await access('/usr/sbin/debootstrap');
  } catch {
    throw new FerryError(ErrorTypes.DriverError, 'debootstrap is not installed: apt-get install debootstrap');
  }
  const tmp = `${tree}.tmp`;
  await mkdir(cacheDir, { recursive: true });
  const mirror = await aptMirror();
  const logFile = join(cacheDir, 'debootstrap.log');
  const t0 = Date.now();
  for (let attempt = 1; ; attempt++) {
    await rm(tmp, { recursive: true, force: true });
    log(`xen lab: debootstrap of the dom0 tree from ${mirror} (a few minutes, once; log ${logFile})`);
    try {
      await debootstrap(['--variant=minbase', `--include=${DOM0_PACKAGES.join(',')}`, 'bookworm', tmp, mirror], logFile, 10 * 60_000, log);
      break;
    } catch (err) {
      if (attempt >= 2) throw err;
      log(`xen lab: ${(err as Error).message}; trying once more`);
    }
  }
  log(`xen lab: dom0 tree built in ${Math.round((Date.now() - t0) / 1000)} s`);
  await writeFile(join(tmp, marker.slice(tree.length + 1)), new Date().toISOString());
  await rm(tree, { recursive: true, force: true });
  await rename(tmp, tree);
  return tree;
}

async function findOne(dir: string, re: RegExp, what: string): Promise<string> {
  const hit = (await readdir(dir)).filter((f) => re.test(f)).sort().pop();
  if (!hit) throw new FerryError(ErrorTypes.DriverError, `no ${what} in ${dir}`);
  return join(dir, hit);
}


/**
 * The PVH guest: dom0's own Debian kernel (so its xen-blkfront/netfront modules match) and the QEMU
 * lab's initramfs with a second cpio appended (the kernel unpacks concatenated archives in order,
 * later files win): the Xen modules, an `order` file naming them, and `/xen-init`.
 */
async function ensureXenGuest(cacheDir: string, tree: string): Promise<{ kernel: string; initrd: string }> {
  const base = await ensureGuestImage(join(repoRoot, '.cache/guest'));
  const kernelSrc = await findOne(join(tree, 'boot'), /^vmlinuz-/, 'dom0 kernel');
  const version = kernelSrc.slice(kernelSrc.lastIndexOf('vmlinuz-') + 'vmlinuz-'.length);
  const wrapper = await readFile(join(scriptDir(), 'guest-init-xen'));
  const h = createHash('sha256').update(await readFile(base.initrd)).update(wrapper).update(version).digest('hex').slice(0, 16);
  const dir = join(cacheDir, 'guest');
  const kernel = join(dir, 'vmlinuz');
  const initrd = join(dir, `initrd-${h}.cpio`);
  if ((await exists(kernel)) && (await exists(initrd))) return { kernel, initrd };
  await mkdir(dir, { recursive: true });
  await copyFile(kernelSrc, kernel);
  const staging = await mkdtemp(join(dir, 'staging-'));
  try {
    await mkdir(join(staging, 'lib', 'modules'), { recursive: true });
    const modRoot = join(tree, 'lib', 'modules', version);
    // Sync on purpose: Node 20's promise readdir with `recursive` can leave its promise unsettled
    // (seen in CI: the image build exited 13, "unsettled top-level await", in this call).
    const all = readdirSync(modRoot, { recursive: true, encoding: 'utf8' });
    for (const m of XEN_GUEST_MODULES) {
      const rel = all.find((p) => /\.ko(\.xz)?$/.test(p) && p.slice(p.lastIndexOf('/') + 1).replace(/\.ko(\.xz)?$/, '') === m);
      if (!rel) throw new FerryError(ErrorTypes.DriverError, `module ${m} not found under ${modRoot}`);
      const dest = join(staging, 'lib', 'modules', `${m}.ko`);
      if (rel.endsWith('.xz')) {
        const raw = await execFileP('/bin/busybox', ['xz', '-dc', join(modRoot, rel)], { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024 });
        await writeFile(dest, raw.stdout);
      } else {
        await copyFile(join(modRoot, rel), dest);
      }
    }
    await writeFile(join(staging, 'lib', 'modules', 'order'), XEN_GUEST_MODULES.join('\n') + '\n');
    await writeFile(join(staging, 'xen-init'), wrapper);
    await chmod(join(staging, 'xen-init'), 0o755);
    const extra = join(dir, 'extra.cpio');
    await packCpio(staging, extra);
    const tmp = `${initrd}.tmp`;
    await writeFile(tmp, Buffer.concat([await readFile(base.initrd), await readFile(extra)]));
    await rename(tmp, initrd);
    await rm(extra, { force: true });
  } finally {
    await rm(staging, { recursive: true, force: true });
  }
  return { kernel, initrd };
}

function scriptDir(): string {
  // From dist/ the scripts stay in src/.
  return here.includes(`${'/dist/'}`) ? join(repoRoot, 'src/labs/xen') : here;
}

export async function ensureXenImages(cacheDir = join(repoRoot, '.cache/xen'), log: (s: string) => void = () => undefined): Promise<XenImages> {
  cacheDir = resolve(cacheDir);
  const tree = await ensureDom0Tree(cacheDir, log);
  const boot = join(tree, 'boot');
  const xen = join(cacheDir, 'xen-4.17');
  if (!(await exists(xen))) {
    const gz = await findOne(boot, /^xen-4\.17.*\.gz$/, 'Xen hypervisor (.gz)');
    const raw = await execFileP('gzip', ['-dc', gz], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 });
    await writeFile(`${xen}.tmp`, raw.stdout);
    await rename(`${xen}.tmp`, xen);
  }
  const dom0Kernel = await findOne(boot, /^vmlinuz-/, 'dom0 kernel');
  const dom0Initrd = await findOne(boot, /^initrd\.img-/, 'dom0 initramfs');

  // The image name carries the init script's hash: editing the script rebuilds the image.
  const init = await readFile(join(scriptDir(), 'dom0-init'));
  const h = createHash('sha256').update(init).update(DOM0_PACKAGES.join(',')).digest('hex').slice(0, 12);
  const rootImage = join(cacheDir, `dom0-${h}.ext4`);
  if (!(await exists(rootImage))) {
    log('xen lab: ext4 image of the dom0 tree');
    await mkdir(join(tree, 'usr/local/sbin'), { recursive: true });
    await writeFile(join(tree, 'usr/local/sbin/ferry-dom0-init'), init);
    await chmod(join(tree, 'usr/local/sbin/ferry-dom0-init'), 0o755);
    // Host keys are per host (second disk); the ones debootstrap generated would be shared.
    for (const f of await readdir(join(tree, 'etc/ssh'))) {
      if (f.startsWith('ssh_host_')) await rm(join(tree, 'etc/ssh', f));
    }
    const tmp = `${rootImage}.tmp`;
    await rm(tmp, { force: true });
    await run('mkfs.ext4', ['-q', '-F', '-L', 'ferry-dom0', '-d', tree, tmp, '2G']);
    await rename(tmp, rootImage);
    // Images of earlier init scripts are 2 GiB (sparse) each: keep only the current one.
    for (const f of await readdir(cacheDir)) {
      if (/^dom0-[0-9a-f]+\.ext4$/.test(f) && join(cacheDir, f) !== rootImage) await rm(join(cacheDir, f), { force: true });
    }
  }
  const guest = await ensureXenGuest(cacheDir, tree);
  return { xen, dom0Kernel, dom0Initrd, rootImage, guestKernel: guest.kernel, guestInitrd: guest.initrd };
}
