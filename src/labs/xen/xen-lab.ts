// The Xen lab: one or two real Xen hosts, each a QEMU TCG machine booting the Xen hypervisor with a
// Debian dom0. The machine reaches each dom0 by SSH through a loopback port forward; the two dom0s
// are joined by a `-netdev socket` link (10.99.0.0/24) that carries `xl migrate`. Nothing leaves
// loopback: the user network runs with restrict=on (only the port forward gets through).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { SshExecutor, runOk } from '../../drivers/xen/executor.js';
import { ensureXenImages, type XenImages } from './xen-images.js';

const execFileP = promisify(execFile);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Where the lab guest's kernel and initramfs sit inside each dom0 (on its per-host disk). */
export const DOM0_GUEST_KERNEL = '/ferry-host/guest/vmlinuz';
export const DOM0_GUEST_INITRD = '/ferry-host/guest/initrd';

export interface XenHost {
  name: string;
  /** Address on the dom0-to-dom0 link: what `xl migrate` targets. */
  linkAddress: string;
  sshPort: number;
  consoleLog: string;
  ssh: SshExecutor;
  /** Kills this host's QEMU (SIGKILL: the root disk is a throwaway snapshot). */
  stop(): Promise<void>;
}

export interface XenLab {
  dir: string;
  hosts: XenHost[];
  /** Private key and known_hosts the machine uses to reach the dom0s. */
  clientKey: Buffer;
  knownHosts: string;
  /** ms from QEMU start to `xl list` answering, per host. */
  bootMs: number[];
  stop(): Promise<void>;
}

export interface XenLabOptions {
  hosts: 1 | 2;
  dir?: string;
  cacheDir?: string;
  log?: (line: string) => void;
  /** ms to wait for a dom0 to answer `xl list`; TCG boots are slow, two at once twice as slow. */
  bootTimeoutMs?: number;
  /** QEMU -cpu; default `qemu64,+svm,+npt` (PVH needs AMD-V with nested paging). */
  cpu?: string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no free port'))));
    });
  });
}

async function keygen(file: string, comment: string): Promise<{ priv: Buffer; pub: string }> {
  await execFileP('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', file]);
  return { priv: await readFile(file), pub: (await readFile(`${file}.pub`, 'utf8')).trim() };
}

const pubKeyBody = (pub: string) => pub.split(/\s+/).slice(0, 2).join(' ');

export async function startXenLab(opts: XenLabOptions): Promise<XenLab> {
  const log = opts.log ?? (() => undefined);
  const images: XenImages = await ensureXenImages(opts.cacheDir, log);
  const dir = opts.dir ?? (await mkdtemp(join(tmpdir(), 'ferry-xen-lab-')));
  await mkdir(dir, { recursive: true });
  await chmod(dir, 0o700);

  const names = opts.hosts === 2 ? ['xa', 'xb'] : ['xa'];
  const linkAddrs = ['10.99.0.1', '10.99.0.2'];
  const client = await keygen(join(dir, 'client_key'), 'ferry-lab-client');
  // One root key shared by the dom0s so `xl migrate` can ssh from either to the other.
  const migration = await keygen(join(dir, 'migration_key'), 'ferry-lab-migration');
  const hostKeys: Array<{ priv: Buffer; pub: string }> = [];
  for (const n of names) hostKeys.push(await keygen(join(dir, `${n}_host_key`), `ferry-lab-${n}`));
  const sshPorts: number[] = [];
  for (const _ of names) sshPorts.push(await freePort());
  const linkPort = await freePort();

  const knownHosts = join(dir, 'known_hosts');
  await writeFile(knownHosts, names.map((_, i) => `[127.0.0.1]:${sshPorts[i]} ${pubKeyBody(hostKeys[i].pub)}\n`).join(''));
  const dom0KnownHosts = names.map((_, i) => `${linkAddrs[i]} ${pubKeyBody(hostKeys[i].pub)}\n`).join('');

  const procs: ChildProcess[] = [];
  // A test process that dies (a hook timed out, a crash) must not leave two Xen hosts eating the
  // machine's cores for the rest of the run: 'exit' handlers run on process.exit and normal ends.
  const killOnExit = () => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const killAll = async () => {
    process.removeListener('exit', killOnExit);
    for (const p of procs) {
      if (p.exitCode === null && p.signalCode === null) {
        p.kill('SIGKILL');
        await new Promise((r) => p.once('exit', r));
      }
    }
  };

  try {
    const started: number[] = [];
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      // Per-host settings travel on a small read-only second disk the dom0 init reads.
      const hostDir = join(dir, `${name}-disk`);
      await mkdir(join(hostDir, 'guest'), { recursive: true });
      await writeFile(join(hostDir, 'host.env'), `FERRY_HOSTNAME=${name}\nFERRY_LINK_ADDR=${linkAddrs[i]}/24\n`);
      await writeFile(join(hostDir, 'machine-id'), randomBytes(16).toString('hex') + '\n');
      await copyFile(join(dir, `${name}_host_key`), join(hostDir, 'ssh_host_ed25519_key'));
      await copyFile(join(dir, `${name}_host_key.pub`), join(hostDir, 'ssh_host_ed25519_key.pub'));
      await writeFile(join(hostDir, 'authorized_keys'), `${client.pub}\n${migration.pub}\n`);
      await writeFile(join(hostDir, 'id_ed25519'), migration.priv);
      // Its own key too, under 127.0.0.1: `xl migrate NAME 127.0.0.1` (a migration within one host).
      await writeFile(join(hostDir, 'known_hosts'), `${dom0KnownHosts}127.0.0.1 ${pubKeyBody(hostKeys[i].pub)}\n`);
      await copyFile(images.guestKernel, join(hostDir, 'guest', 'vmlinuz'));
      await copyFile(images.guestInitrd, join(hostDir, 'guest', 'initrd'));
      const hostImg = join(dir, `${name}-host.ext4`);
      await execFileP('mkfs.ext4', ['-q', '-F', '-d', hostDir, hostImg, '64M']);

      const consoleLog = join(dir, `${name}-console.log`);
      const linkMode = i === 0 ? `listen=127.0.0.1:${linkPort}` : `connect=127.0.0.1:${linkPort}`;
      for (const p of [images.dom0Kernel, images.dom0Initrd]) {
        // QEMU separates multiboot modules with commas.
        if (p.includes(',')) throw new FerryError(ErrorTypes.BadInput, `lab path ${p} contains a comma`);
      }
      const args = [
        '-accel', 'tcg,thread=multi',
        // PVH needs AMD-V with nested paging offered to Xen (lab-notes); -cpu max crashes dom0.
        '-cpu', opts.cpu ?? 'qemu64,+svm,+npt',
        '-m', '1536', '-smp', '1',
        '-display', 'none', '-monitor', 'none', '-no-reboot',
        '-serial', `file:${consoleLog}`,
        '-kernel', images.xen,
        '-append', 'console=com1 com1=115200,8n1 dom0_mem=768M,max:768M loglvl=all guest_loglvl=all',
        '-initrd', `${images.dom0Kernel} root=/dev/vda rw console=hvc0 net.ifnames=0 init=/usr/local/sbin/ferry-dom0-init,${images.dom0Initrd}`,
        '-drive', `file=${images.rootImage},format=raw,if=virtio,snapshot=on,cache=unsafe`,
        '-drive', `file=${hostImg},format=raw,if=virtio,readonly=on`,
        '-netdev', `user,id=n0,restrict=on,net=10.88.0.0/24,host=10.88.0.2,hostfwd=tcp:127.0.0.1:${sshPorts[i]}-10.88.0.15:22`,
        '-device', 'virtio-net-pci,netdev=n0,addr=0x4',
        '-netdev', `socket,id=n1,${linkMode}`,
        '-device', `virtio-net-pci,netdev=n1,addr=0x5,mac=52:54:00:99:00:0${i + 1}`,
      ];
      const qlog = openSync(join(dir, `${name}-qemu.log`), 'w');
      const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', qlog, qlog] });
      closeSync(qlog);
      procs.push(child);
      started.push(Date.now());
      log(`xen lab: host ${name} booting (ssh 127.0.0.1:${sshPorts[i]}, console ${consoleLog})`);
      // The listening side must exist before the connecting side starts.
      if (i === 0 && names.length > 1) await sleep(500);
    }

    const deadline = Date.now() + (opts.bootTimeoutMs ?? 600_000);
    const hosts: XenHost[] = [];
    const bootMs: number[] = [];
    for (let i = 0; i < names.length; i++) {
      let ssh: SshExecutor | null = null;
      for (;;) {
        if (procs[i].exitCode !== null) {
          throw new FerryError(ErrorTypes.DriverError, `Xen host ${names[i]} QEMU exited (${procs[i].exitCode}); see ${dir}/${names[i]}-qemu.log and -console.log`);
        }
        try {
          ssh ??= await SshExecutor.connect(
            { host: '127.0.0.1', port: sshPorts[i], username: 'root', privateKey: client.priv, knownHostsFile: knownHosts },
            { readyTimeoutMs: 15_000 },
          );
          // A dom0 still starting its Xen services can leave xl waiting: bound each attempt.
          const r = await ssh.run('xl', ['list'], { timeoutMs: 20_000 });
          if (r.code === 0 && /Domain-0/.test(r.stdout)) break;
        } catch (err) {
          if (err instanceof FerryError && err.type === ErrorTypes.AuthFailed && /host key/.test(err.message)) throw err;
          ssh = null;
        }
        if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, `Xen host ${names[i]} did not answer xl list in time; see ${dir}/${names[i]}-console.log`);
        await sleep(2000);
      }
      bootMs.push(Date.now() - started[i]);
      const child = procs[i];
      const executor = ssh;
      hosts.push({
        name: names[i],
        linkAddress: linkAddrs[i],
        sshPort: sshPorts[i],
        consoleLog: join(dir, `${names[i]}-console.log`),
        ssh: executor,
        async stop() {
          await executor.close();
          if (child.exitCode === null && child.signalCode === null) {
            child.kill('SIGKILL');
            await new Promise((r) => child.once('exit', r));
          }
        },
      });
      log(`xen lab: host ${names[i]} answers xl list after ${bootMs[i]} ms`);
    }
    return {
      dir,
      hosts,
      clientKey: client.priv,
      knownHosts,
      bootMs,
      async stop() {
        for (const h of hosts) await h.ssh.close().catch(() => undefined);
        await killAll();
        if (!opts.dir) await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await killAll();
    throw err;
  }
}

/** Writes the lab guest's disk on a dom0 (sparse raw file). */
export async function createHostDisk(ssh: SshExecutor, path: string, bytes: number): Promise<void> {
  await runOk(ssh, 'truncate', ['-s', String(bytes), path]);
}
