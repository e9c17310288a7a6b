// The libvirt lab's hosts: one libvirtd per lab node (Debian's libvirt-daemon-system), each in the
// node's network namespace and a mount namespace of its own (libvirtd-node), so each has its own
// /etc/libvirt, /var/lib/libvirt and /run/libvirt as two machines would. A bridge br0 (10.0.2.2/24)
// per node is what the operator's domain XML plugs its NIC into; the guest answers on 10.0.2.15,
// which only its node reaches, so a small forwarder per node exposes it on the node's management
// address. Node workers run inside the same namespaces (nsenter), as a worker on the host would.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { cp, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { execInNamespace, runInNamespace, type LabNode } from '../lab-network.js';
import { nodeScript, repoRoot, runToEnd } from '../lab-common.js';
import { Virsh } from '../../drivers/libvirt/virsh.js';

/** Where the guest's request port is forwarded on each node's management address. */
export const LIBVIRT_GUEST_FORWARD_PORT = 17070;
export const LIBVIRT_GUEST_ADDRESS = '10.0.2.15';
export const LIBVIRT_BRIDGE = 'br0';

// Lab-only: QEMU as root without namespaces or a security driver, so libvirt runs unprivileged
// containers' way here; logs to files (no virtlogd in a namespace without systemd).
const QEMU_CONF = ['user = "root"', 'group = "root"', 'dynamic_ownership = 0', 'remember_owner = 0', 'security_driver = "none"', 'namespaces = [ ]', 'cgroup_controllers = [ ]', 'stdio_handler = "file"', ''].join('\n');

export interface LibvirtHost {
  node: LabNode;
  dir: string;
  /** libvirtd, whose namespaces the node's worker and commands enter. */
  pid: number;
  virsh: Virsh;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function pidOf(file: string): Promise<number | null> {
  const n = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  return Number.isInteger(n) && n > 0 ? n : null;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Kills what an earlier lab run left: libvirtds (by pid file) and the QEMUs libvirt started. */
async function killLeftovers(dir: string): Promise<void> {
  const pid = await pidOf(join(dir, 'libvirtd.pid'));
  if (pid && alive(pid)) {
    process.kill(pid, 'SIGKILL');
    for (let i = 0; i < 50 && alive(pid); i++) await sleep(100);
  }
  // libvirt names its QEMUs `-name guest=ID,...`; the QEMU lab's own are `-name ferry-ID`.
  await runToEnd(spawn('pkill', ['-KILL', '-f', '^/usr/bin/qemu-system-x86_64 -name guest='], { stdio: 'ignore' }), 'pkill').catch(() => undefined);
}

export async function startLibvirtHosts(labDir: string, nodes: LabNode[], log: (l: string) => void = () => undefined) {
  const hosts: LibvirtHost[] = [];
  const daemons: ChildProcess[] = [];
  for (const node of nodes) {
    const dir = join(labDir, 'libvirt', node.name);
    await killLeftovers(dir);
    await rm(dir, { recursive: true, force: true });
    await mkdir(join(dir, 'etc'), { recursive: true });
    await cp('/etc/libvirt', join(dir, 'etc'), { recursive: true });
    await writeFile(join(dir, 'etc', 'qemu.conf'), QEMU_CONF);
    // Two daemons on one machine report the same host UUID, and libvirt refuses to migrate a
    // domain "to the same host": each lab host gets its own.
    await writeFile(join(dir, 'etc', 'libvirtd.conf'), `host_uuid = "${randomUUID()}"\nlisten_tls = 0\nlisten_tcp = 0\n`);
    for (const p of ['lib/images', 'lib/boot', 'lib/moved']) await mkdir(join(dir, p), { recursive: true });

    await execInNamespace(node.netns, 'ip', ['link', 'del', LIBVIRT_BRIDGE]).catch(() => undefined);
    await execInNamespace(node.netns, 'ip', ['link', 'add', LIBVIRT_BRIDGE, 'type', 'bridge']);
    await execInNamespace(node.netns, 'ip', ['addr', 'add', '10.0.2.2/24', 'dev', LIBVIRT_BRIDGE]);
    await execInNamespace(node.netns, 'ip', ['link', 'set', LIBVIRT_BRIDGE, 'up']);

    log(`libvirt: libvirtd for ${node.name} in ${node.netns}, state in ${dir}`);
    const out = createWriteStream(join(dir, 'libvirtd.log'), { flags: 'a' });
    const child = runInNamespace(node.netns, 'unshare', ['--mount', '--propagation', 'private', '--', join(repoRoot, 'src/labs/libvirt/libvirtd-node'), dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(out);
    child.stderr!.pipe(out);
    daemons.push(child);
    const virsh = new Virsh(`qemu:///system?socket=${join(dir, 'run', 'libvirt-sock')}`);
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`libvirtd for ${node.name} exited ${child.exitCode}: see ${join(dir, 'libvirtd.log')}`);
      if (await virsh.run(['version']).then(() => true, () => false)) break;
      if (Date.now() > deadline) throw new Error(`libvirtd for ${node.name} did not answer in 30 s: see ${join(dir, 'libvirtd.log')}`);
      await sleep(200);
    }
    hosts.push({ node, dir, pid: (await pidOf(join(dir, 'libvirtd.pid')))!, virsh });
  }

  const forwarders: ChildProcess[] = [];
  for (const h of hosts) {
    const [cmd, ...rest] = nodeScript('guest-forward');
    forwarders.push(runInNamespace(h.node.netns, cmd!, [...rest, h.node.mgmtAddress, String(LIBVIRT_GUEST_FORWARD_PORT), LIBVIRT_GUEST_ADDRESS, '7000'], { stdio: 'ignore' }));
  }

  const host = (name: string): LibvirtHost => {
    const h = hosts.find((x) => x.node.name === name);
    if (!h) throw new Error(`no libvirt lab host ${name}`);
    return h;
  };

  return {
    hosts,
    host,
    /** Runs a command on a host: its network and mounts, as a shell on that machine would. */
    spawnOn(name: string, cmd: string, args: readonly string[], o: SpawnOptions = {}): ChildProcess {
      // --wd: entering a mount namespace starts in its root; tsx and relative paths need ours.
      const wd = typeof o.cwd === 'string' ? o.cwd : process.cwd();
      return spawn('nsenter', ['--target', String(host(name).pid), '--mount', '--net', `--wd=${wd}`, '--', cmd, ...args], o);
    },
    async execOn(name: string, cmd: string, args: readonly string[]): Promise<string> {
      return runToEnd(this.spawnOn(name, cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }), `${cmd} on ${name}`);
    },
    /** A host path as the root namespace sees it (the image and boot folders are bind mounts). */
    outside(name: string, hostPath: string): string {
      const h = host(name);
      if (hostPath.startsWith('/var/lib/libvirt/')) return join(h.dir, 'lib', hostPath.slice('/var/lib/libvirt/'.length));
      return hostPath;
    },
    async close(): Promise<void> {
      for (const f of forwarders) f.kill('SIGTERM');
      for (const h of hosts) {
        const names = (await h.virsh.run(['list', '--name']).catch(() => '')).split('\n').map((s) => s.trim()).filter(Boolean);
        for (const n of names) await h.virsh.run(['destroy', '--domain', n]).catch(() => undefined);
      }
      for (const d of daemons) {
        if (d.exitCode !== null) continue;
        const exited = new Promise((r) => d.once('exit', r));
        d.kill('SIGTERM');
        await Promise.race([exited, sleep(10_000)]);
      }
      for (const h of hosts) await killLeftovers(h.dir);
    },
  };
}

export type LibvirtHosts = Awaited<ReturnType<typeof startLibvirtHosts>>;
