// virsh, run with an argument array against one libvirtd. Chosen over libvirt's RPC protocol: the
// npm bindings are unmaintained native modules, and virsh is on every libvirt host. QMP reaches
// the domain's QEMU through `virsh qemu-monitor-command`, since libvirt owns the monitor socket.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { QmpCommandError } from '../qemu/qmp.js';
import type { QmpExecutor } from '../qemu/dirty-tracking.js';

const execFileP = promisify(execFile);

/** libvirt's own state words (`virsh domstate`), and `absent` when it has no such domain. */
export type DomainState = 'running' | 'paused' | 'shut off' | 'shutdown' | 'crashed' | 'pmsuspended' | 'blocked' | 'idle' | 'in shutdown' | 'absent';

export class Virsh {
  constructor(
    /** The local libvirtd, e.g. `qemu:///system` (or with `?socket=` for a non-default socket). */
    readonly uri: string,
    private readonly bin = 'virsh',
  ) {}

  /** Runs one virsh command; its stdout, or a DriverError carrying virsh's own message. */
  async run(args: string[], opts: { timeoutMs?: number } = {}): Promise<string> {
    try {
      const { stdout } = await execFileP(this.bin, ['-q', '-c', this.uri, ...args], { timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 << 20 });
      return stdout;
    } catch (err) {
      const e = err as { code?: string | number; stderr?: string; message: string };
      if (e.code === 'ENOENT') throw new FerryError(ErrorTypes.DriverError, `${this.bin} not found on this node: install libvirt-clients`);
      throw new FerryError(ErrorTypes.DriverError, `virsh ${args[0]} failed: ${cleanError(e.stderr || e.message)}`);
    }
  }

  /** The domain's state, `absent` when libvirt has no domain of that name. */
  async domstate(name: string): Promise<{ state: DomainState; reason: string }> {
    try {
      const out = (await this.run(['domstate', '--reason', '--', name])).trim();
      const m = /^(.*?)(?: \((.*)\))?$/.exec(out)!;
      return { state: m[1] as DomainState, reason: m[2] ?? '' };
    } catch (e) {
      if (e instanceof FerryError && /failed to get domain|Domain not found/i.test(e.message)) return { state: 'absent', reason: '' };
      throw e;
    }
  }

  /** QMP of a running domain's QEMU, through libvirt. */
  qmp(domain: string): QmpExecutor {
    return {
      execute: async <T>(command: string, args?: Record<string, unknown>): Promise<T> => {
        const cmd = JSON.stringify(args ? { execute: command, arguments: args } : { execute: command });
        const out = await this.run(['qemu-monitor-command', '--', domain, cmd]);
        let reply: { return?: unknown; error?: { class?: string; desc?: string } };
        try {
          reply = JSON.parse(out) as typeof reply;
        } catch {
          throw new FerryError(ErrorTypes.DriverError, `QMP ${command} through libvirt answered something that is not JSON: ${out.slice(0, 200)}`);
        }
        if (reply.error) throw new QmpCommandError(command, reply.error.class ?? 'GenericError', reply.error.desc ?? 'no description');
        return reply.return as T;
      },
    };
  }
}

/** A paused domain whose reason says it is still being started or still receiving a migration. */
export function stillIncoming(reason: string): boolean {
  return /incoming|starting/.test(reason);
}

/** virsh prefixes every message with `error: `, and repeats some; one line for the operator. */
export function cleanError(stderr: string): string {
  const lines = stderr
    .split('\n')
    .map((l) => l.replace(/^error:\s*/, '').trim())
    .filter(Boolean);
  return [...new Set(lines)].join('; ') || 'no message';
}
