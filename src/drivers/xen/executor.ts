// Where the Xen driver's commands and file I/O run: on this machine (a worker inside dom0) or on a
// Xen host over SSH (a worker elsewhere). Both take argument arrays, never a shell string.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { Client, type ConnectConfig, type SFTPWrapper } from 'ssh2';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { DiskTarget } from '../../dataplane/types.js';
import { openLocalFile } from '../../dataplane/disk-target.js';

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Exit code; -1 when the command died from a signal or could not start. */
  code: number;
}

export interface RunOptions {
  /** Written to the command's stdin, then stdin is closed. */
  input?: string | Buffer;
  /**
   * Kill the command after this long (the result then has code -1). Default: DEFAULT_RUN_TIMEOUT_MS.
   * There is no "no deadline": 0 is taken as 1 ms, not as execFile's and timeout(1)'s "never".
   */
  timeoutMs?: number;
}

/**
 * Every command gets a deadline, so a wedged `xl` or a host that stopped answering surfaces as an
 * error instead of an activity (or a lab) that waits forever. Long steps (`xl migrate`,
 * `sha256sum` of a disk) pass their own.
 */
export const DEFAULT_RUN_TIMEOUT_MS = 10 * 60_000;

/**
 * A file on the executor's host, read and written at positions. It is a DiskTarget, so the data
 * plane's receiver can write a Xen host's disk through it.
 */
export type HostFile = DiskTarget;

export interface Executor {
  /** For messages: `local` or `user@host:port`. */
  readonly where: string;
  run(cmd: string, args: string[], opts?: RunOptions): Promise<RunResult>;
  /** Opens `path` on the host: `r` read-only, `r+` read-write (must exist). */
  openFile(path: string, mode: 'r' | 'r+'): Promise<HostFile>;
  writeFile(path: string, data: string | Buffer): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  close(): Promise<void>;
}

/** Runs `cmd` and throws a DriverError with its stderr unless it exits 0. */
export async function runOk(ex: Executor, cmd: string, args: string[], opts?: RunOptions): Promise<string> {
  const r = await ex.run(cmd, args, opts);
  if (r.code !== 0) {
    throw new FerryError(ErrorTypes.DriverError, `${cmd} ${args.join(' ')} failed on ${ex.where} (exit ${r.code}): ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

function checkArgs(cmd: string, args: string[]): void {
  for (const a of [cmd, ...args]) {
    if (typeof a !== 'string') throw new FerryError(ErrorTypes.BadInput, `command arguments must be strings, got ${typeof a}`);
    // NUL cannot travel in an argv entry; silently truncating it would run a different command.
    if (a.includes('\0')) throw new FerryError(ErrorTypes.BadInput, `command argument contains a NUL byte: ${JSON.stringify(a)}`);
  }
  if (cmd === '') throw new FerryError(ErrorTypes.BadInput, 'empty command');
}

export class LocalExecutor implements Executor {
  readonly where = 'local';

  async run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    checkArgs(cmd, args);
    const limit = Math.max(1, opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS);
    return new Promise((resolve) => {
      const child = execFile(cmd, args, { maxBuffer: 256 * 1024 * 1024, timeout: limit, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
        const e = err as (NodeJS.ErrnoException & { code?: number | string; killed?: boolean }) | null;
        let code = 0;
        if (e) code = typeof e.code === 'number' ? e.code : -1;
        let errText = String(stderr) || (e && code === -1 ? e.message : '');
        if (e?.killed) errText += `\nferry: ${cmd} killed after ${limit} ms on local`;
        resolve({ stdout: String(stdout), stderr: errText, code });
      });
      if (opts.input !== undefined) child.stdin?.end(opts.input);
      else child.stdin?.end();
    });
  }

  openFile(path: string, mode: 'r' | 'r+'): Promise<HostFile> {
    return openLocalFile(path, mode);
  }

  async writeFile(path: string, data: string | Buffer): Promise<void> {
    const { writeFile } = await import('node:fs/promises');
    await writeFile(path, data);
  }

  readFile(path: string): Promise<Buffer> {
    return readFile(path);
  }

  async close(): Promise<void> {}
}

/**
 * Quotes one argument for a POSIX remote shell: everything inside single quotes is literal, and a
 * single quote itself is closed, escaped and reopened ('\''). ssh's exec request always goes
 * through the remote user's shell, so this is the only safe way to pass an argv across.
 */
export function shellQuote(arg: string): string {
  if (arg.includes('\0')) throw new FerryError(ErrorTypes.BadInput, `argument contains a NUL byte: ${JSON.stringify(arg)}`);
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

export interface SshTarget {
  host: string;
  port: number;
  username: string;
  privateKey: Buffer | string;
  /** OpenSSH known_hosts file; the host key must match an entry for `[host]:port` (or `host` on 22). */
  knownHostsFile: string;
}

/** Parses known_hosts lines (plain host patterns, no hashing) into host -> base64 keys. */
export function parseKnownHosts(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith('@')) continue;
    const [hosts, , key] = line.split(/\s+/);
    if (!hosts || !key) continue;
    for (const h of hosts.split(',')) out.set(h, [...(out.get(h) ?? []), key]);
  }
  return out;
}

function knownHostsName(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

export class SshExecutor implements Executor {
  readonly where: string;
  private sftpP: Promise<SFTPWrapper> | null = null;

  /** True once the connection is gone (the host rebooted, the network dropped, close()). */
  closed = false;

  private constructor(
    private readonly conn: Client,
    target: SshTarget,
  ) {
    this.where = `${target.username}@${target.host}:${target.port}`;
    conn.on('close', () => (this.closed = true));
  }

  static async connect(
    target: SshTarget,
    opts: { readyTimeoutMs?: number; keepaliveIntervalMs?: number; keepaliveCountMax?: number } = {},
  ): Promise<SshExecutor> {
    const known = parseKnownHosts(await readFile(target.knownHostsFile, 'utf8'));
    const name = knownHostsName(target.host, target.port);
    const allowed = known.get(name) ?? [];
    if (allowed.length === 0) {
      throw new FerryError(ErrorTypes.AuthFailed, `no host key for ${name} in ${target.knownHostsFile}: add it before connecting`);
    }
    const conn = new Client();
    let rejectedKey: string | null = null;
    const cfg: ConnectConfig = {
      host: target.host,
      port: target.port,
      username: target.username,
      privateKey: target.privateKey,
      readyTimeout: opts.readyTimeoutMs ?? 20_000,
      // A host that vanishes without closing TCP (powered off, link cut) closes the connection
      // within two minutes, failing what is in flight instead of leaving it waiting forever. Two
      // minutes, not less: an emulated dom0 busy in xl's stop-and-copy can be slow to answer.
      keepaliveInterval: opts.keepaliveIntervalMs ?? 15_000,
      keepaliveCountMax: opts.keepaliveCountMax ?? 8,
      // The raw key blob is what known_hosts stores in base64; compare exactly.
      hostVerifier: (key: Buffer) => {
        const b64 = key.toString('base64');
        if (allowed.includes(b64)) return true;
        rejectedKey = b64;
        return false;
      },
    };
    await new Promise<void>((resolve, reject) => {
      conn.once('ready', () => resolve());
      // ssh2 may emit more than one error (and more after `ready`, e.g. when the host dies): an
      // unhandled one would crash the process, so this listener stays; only the first one counts.
      let settled = false;
      conn.once('ready', () => (settled = true));
      conn.on('error', (err) => {
        if (settled) return;
        settled = true;
        conn.end();
        if (rejectedKey !== null) {
          reject(new FerryError(ErrorTypes.AuthFailed, `host key of ${name} does not match ${target.knownHostsFile}: refusing to connect`));
        } else if ((err as { level?: string }).level === 'client-authentication') {
          reject(new FerryError(ErrorTypes.AuthFailed, `ssh key authentication as ${target.username} to ${name} failed`));
        } else {
          reject(new FerryError(ErrorTypes.DriverError, `ssh to ${name} failed: ${err.message}`));
        }
      });
      conn.connect(cfg);
    });
    return new SshExecutor(conn, target);
  }

  async run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
    checkArgs(cmd, args);
    const limit = Math.max(1, opts.timeoutMs ?? DEFAULT_RUN_TIMEOUT_MS);
    // The host enforces the deadline itself: OpenSSH does not act on a "signal" request for a plain
    // exec session, and closing the channel leaves the command running. GNU timeout kills the
    // command's whole process group (xl migrate's ssh too), itself included: it ends by SIGKILL.
    const line = ['timeout', '-s', 'KILL', String(limit / 1000), cmd, ...args].map(shellQuote).join(' ');
    const t0 = Date.now();
    return new Promise((resolve, reject) => {
      this.conn.exec(line, (err, stream) => {
        if (err) return reject(new FerryError(ErrorTypes.DriverError, `ssh exec on ${this.where} failed: ${err.message}`));
        const out: Buffer[] = [];
        const errb: Buffer[] = [];
        let code = -1;
        let signal: string | undefined;
        let settled = false;
        const finish = (note?: string) => {
          if (settled) return;
          settled = true;
          clearTimeout(backstop);
          const timedOut = note !== undefined || (Date.now() - t0 >= limit && (signal === 'SIGKILL' || signal === 'KILL' || code === 124 || code === 137));
          if (timedOut) errb.push(Buffer.from(`\nferry: ${cmd} killed after ${limit} ms on ${this.where}${note ?? ''}`));
          resolve({ stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(errb).toString(), code: timedOut ? -1 : code });
        };
        // A host too wedged to run its own timeout: stop waiting anyway.
        const backstop = setTimeout(() => {
          stream.close();
          finish(' (the host did not answer)');
        }, limit + 30_000);
        stream.on('data', (d: Buffer) => out.push(d));
        stream.stderr.on('data', (d: Buffer) => errb.push(d));
        stream.on('exit', (c: number | null, sig?: string) => {
          code = typeof c === 'number' ? c : -1;
          signal = sig;
        });
        stream.on('close', () => finish());
        if (opts.input !== undefined) stream.end(opts.input);
        else stream.end();
      });
    });
  }

  private sftp(): Promise<SFTPWrapper> {
    if (!this.sftpP) {
      this.sftpP = new Promise((resolve, reject) =>
        this.conn.sftp((err, s) => (err ? reject(new FerryError(ErrorTypes.DriverError, `sftp on ${this.where}: ${err.message}`)) : resolve(s))),
      );
      this.sftpP.catch(() => (this.sftpP = null));
    }
    return this.sftpP;
  }

  async openFile(path: string, mode: 'r' | 'r+'): Promise<HostFile> {
    const sftp = await this.sftp();
    const where = this.where;
    const handle = await new Promise<Buffer>((resolve, reject) =>
      sftp.open(path, mode, (err, h) => (err ? reject(new FerryError(ErrorTypes.DriverError, `open ${path} on ${where}: ${err.message}`)) : resolve(h))),
    );
    // SFTP servers cap one read at 64 KiB or less; larger reads are split here.
    const MAX = 32 * 1024;
    const readSome = (buf: Buffer, at: number, len: number, pos: number) =>
      new Promise<number>((resolve, reject) =>
        sftp.read(handle, buf, at, len, pos, (err, n) => {
          // ssh2 reports end of file as an error with code 1 (SSH_FX_EOF).
          if (err && (err as { code?: number }).code === 1) return resolve(0);
          if (err) return reject(new FerryError(ErrorTypes.DriverError, `read ${path} on ${where}: ${err.message}`));
          resolve(n);
        }),
      );
    return {
      async read(offset, length) {
        const buf = Buffer.alloc(length);
        // Several requests in flight: one round trip per 32 KiB would crawl over a slow link.
        const parts: Promise<number>[] = [];
        for (let at = 0; at < length; at += MAX) {
          const len = Math.min(MAX, length - at);
          parts.push(
            (async () => {
              let got = 0;
              while (got < len) {
                const n = await readSome(buf, at + got, len - got, offset + at + got);
                if (n === 0) break;
                got += n;
              }
              return got;
            })(),
          );
        }
        const got = await Promise.all(parts);
        // A short part means end of file: keep only the contiguous prefix.
        let total = 0;
        for (const g of got) {
          total += g;
          if (g < MAX) break;
        }
        return buf.subarray(0, Math.min(total, length));
      },
      async write(offset, data) {
        const parts: Promise<void>[] = [];
        for (let at = 0; at < data.length; at += MAX) {
          const len = Math.min(MAX, data.length - at);
          parts.push(
            new Promise((resolve, reject) =>
              sftp.write(handle, data, at, len, offset + at, (err) =>
                err ? reject(new FerryError(ErrorTypes.DriverError, `write ${path} on ${where}: ${err.message}`)) : resolve(),
              ),
            ),
          );
        }
        await Promise.all(parts);
      },
      size: () =>
        new Promise<number>((resolve, reject) =>
          sftp.fstat(handle, (err, st) => (err ? reject(new FerryError(ErrorTypes.DriverError, `stat ${path} on ${where}: ${err.message}`)) : resolve(st.size))),
        ),
      truncate: (size) =>
        new Promise<void>((resolve, reject) =>
          sftp.fsetstat(handle, { size }, (err) => (err ? reject(new FerryError(ErrorTypes.DriverError, `truncate ${path} on ${where}: ${err.message}`)) : resolve())),
        ),
      // OpenSSH's fsync extension: the receiver acknowledges only what the host made durable.
      datasync: () =>
        new Promise<void>((resolve, reject) =>
          sftp.ext_openssh_fsync(handle, (err) => (err ? reject(new FerryError(ErrorTypes.DriverError, `fsync ${path} on ${where}: ${err.message}`)) : resolve())),
        ),
      close: () => new Promise<void>((resolve) => sftp.close(handle, () => resolve())),
    };
  }

  async writeFile(path: string, data: string | Buffer): Promise<void> {
    const sftp = await this.sftp();
    await new Promise<void>((resolve, reject) =>
      sftp.writeFile(path, data, (err) => (err ? reject(new FerryError(ErrorTypes.DriverError, `write ${path} on ${this.where}: ${err.message}`)) : resolve())),
    );
  }

  async readFile(path: string): Promise<Buffer> {
    const sftp = await this.sftp();
    return new Promise((resolve, reject) =>
      sftp.readFile(path, (err, d) => (err ? reject(new FerryError(ErrorTypes.DriverError, `read ${path} on ${this.where}: ${err.message}`)) : resolve(d))),
    );
  }

  /** A TCP connection opened by the host's sshd to `host:port` as seen from the host (direct-tcpip). */
  openTcp(host: string, port: number): Promise<Duplex> {
    return new Promise((resolve, reject) =>
      this.conn.forwardOut('127.0.0.1', 0, host, port, (err, stream) =>
        err ? reject(new FerryError(ErrorTypes.DriverError, `tcp to ${host}:${port} through ${this.where}: ${err.message}`)) : resolve(stream),
      ),
    );
  }

  async close(): Promise<void> {
    this.conn.end();
  }
}

/**
 * An SshExecutor that reconnects when its connection dropped, so a node worker survives a dom0
 * reboot or a network blip (calls in flight fail; Temporal retries the activity). Host keys are
 * checked again on every connect.
 */
export class ReconnectingSshExecutor implements Executor {
  readonly where: string;
  private current: Promise<SshExecutor> | null = null;

  constructor(private readonly target: SshTarget) {
    this.where = `${target.username}@${target.host}:${target.port}`;
  }

  private async session(): Promise<SshExecutor> {
    const ex = await this.current?.catch(() => null);
    if (ex && !ex.closed) return ex;
    this.current = SshExecutor.connect(this.target);
    return this.current;
  }

  async run(cmd: string, args: string[], opts?: RunOptions): Promise<RunResult> {
    return (await this.session()).run(cmd, args, opts);
  }
  async openFile(path: string, mode: 'r' | 'r+'): Promise<HostFile> {
    return (await this.session()).openFile(path, mode);
  }
  async writeFile(path: string, data: string | Buffer): Promise<void> {
    return (await this.session()).writeFile(path, data);
  }
  async readFile(path: string): Promise<Buffer> {
    return (await this.session()).readFile(path);
  }
  async close(): Promise<void> {
    const ex = await this.current?.catch(() => null);
    this.current = null;
    await ex?.close();
  }
}
