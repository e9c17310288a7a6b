// Both executors against the real machine: a local execFile and a real sshd on 127.0.0.1.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalExecutor, SshExecutor, shellQuote, type Executor } from '../../src/drivers/xen/executor.js';
import { FerryError } from '../../src/shared/errors.js';
import { startTestSshd, type TestSshd } from './test-sshd.js';

const HOSTILE = [
  "it's",
  '$(touch /tmp/ferry-pwned)',
  '`id`',
  'a; rm -rf /',
  '"double" \\back\\slash',
  'new\nline',
  '*',
  '',
  ' spaced  out ',
  "'; echo '",
  '$HOME ${PATH} !! #comment',
  'ünïcödé ✓',
];

let sshd: TestSshd;
let ssh: SshExecutor;
let work: string;
const local = new LocalExecutor();

beforeAll(async () => {
  sshd = await startTestSshd();
  ssh = await SshExecutor.connect({ host: '127.0.0.1', port: sshd.port, username: 'root', privateKey: sshd.clientKey, knownHostsFile: sshd.knownHosts });
  work = await mkdtemp(join(tmpdir(), 'ferry-exec-'));
}, 30_000);

afterAll(async () => {
  await ssh?.close();
  await sshd?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('shellQuote', () => {
  it('refuses NUL', () => {
    expect(() => shellQuote('a\0b')).toThrow(FerryError);
  });
});

for (const [name, get] of [
  ['local', () => local],
  ['ssh', () => ssh],
] as const) {
  describe(`${name} executor`, () => {
    it('passes hostile arguments through unchanged, one argv entry each', async () => {
      const ex: Executor = get();
      // printf prints each argument between markers: any shell interpretation would change them.
      const r = await ex.run('printf', ['<%s>\\n', ...HOSTILE]);
      expect(r.code).toBe(0);
      expect(r.stdout).toBe(HOSTILE.map((a) => `<${a}>\n`).join(''));
      await expect(readFile('/tmp/ferry-pwned')).rejects.toThrow();
    });

    it('reports exit codes and stderr, and feeds stdin', async () => {
      const ex: Executor = get();
      const r = await ex.run('sh', ['-c', 'echo oops >&2; exit 3']);
      expect(r.code).toBe(3);
      expect(r.stderr.trim()).toBe('oops');
      const c = await ex.run('cat', [], { input: 'from stdin' });
      expect(c.stdout).toBe('from stdin');
    });

    it('kills a command that outlives its deadline and says so', async () => {
      const ex: Executor = get();
      const r = await ex.run('sleep', ['600'], { timeoutMs: 300 });
      expect(r.code).toBe(-1);
      expect(r.stderr).toMatch(/ferry: sleep killed after 300 ms/);
    });

    it('refuses a NUL in an argument before running anything', async () => {
      const ex: Executor = get();
      await expect(ex.run('touch', [join(work, 'x\0y')])).rejects.toThrow(/NUL/);
    });

    it('reads and writes a file at positions', async () => {
      const ex: Executor = get();
      const f = join(work, `${name}.img`);
      await writeFile(f, Buffer.alloc(300_000, 0));
      const data = Buffer.alloc(100_000);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      const h = await ex.openFile(f, 'r+');
      await h.write(150_000, data);
      expect(Buffer.compare(await h.read(150_000, 100_000), data)).toBe(0);
      // Reading across the end returns only what exists.
      expect((await h.read(290_000, 50_000)).length).toBe(10_000);
      await h.close();
      const onDisk = await readFile(f);
      expect(Buffer.compare(onDisk.subarray(150_000, 250_000), data)).toBe(0);
      await ex.writeFile(join(work, `${name}.txt`), 'hello');
      expect((await ex.readFile(join(work, `${name}.txt`))).toString()).toBe('hello');
    });
  });
}

/** Every process below `pid`, from `ps` (the sshd serving each connection forks per session). */
async function descendants(pid: number): Promise<number[]> {
  const out: number[] = [];
  const r = await local.run('ps', ['-e', '-o', 'pid=,ppid=']);
  const pairs = r.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/).map(Number));
  const walk = (p: number) => {
    for (const [c, pp] of pairs) if (pp === p && c !== undefined) (out.push(c), walk(c));
  };
  walk(pid);
  return out;
}

describe('ssh executor, host stops answering', () => {
  it('fails the command in flight (keepalive) instead of waiting forever', async () => {
    const before = await descendants(sshd.pid);
    const ex = await SshExecutor.connect(
      { host: '127.0.0.1', port: sshd.port, username: 'root', privateKey: sshd.clientKey, knownHostsFile: sshd.knownHosts },
      { keepaliveIntervalMs: 500, keepaliveCountMax: 3 },
    );
    const running = ex.run('sleep', ['600']);
    await new Promise((r) => setTimeout(r, 1000));
    // Freeze this connection's sshd processes (and its sleep): TCP stays up, nothing answers, as
    // with a host that hangs or a link that silently drops. Without keepalives this never returns.
    const mine = (await descendants(sshd.pid)).filter((p) => !before.includes(p));
    expect(mine.length).toBeGreaterThan(0);
    for (const p of mine) process.kill(p, 'SIGSTOP');
    try {
      const r = await running;
      expect(r.code).toBe(-1);
      expect(ex.closed).toBe(true);
    } finally {
      for (const p of mine) {
        try {
          process.kill(p, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
  }, 60_000);
});

describe('ssh host key verification', () => {
  it('refuses a host whose key is not the one in known_hosts', async () => {
    const other = join(work, 'wrong_known_hosts');
    const line = (await readFile(sshd.knownHosts, 'utf8')).split(' ');
    // Same host, a different (valid-looking) ed25519 key.
    await writeFile(other, `${line[0]} ${line[1]} AAAAC3NzaC1lZDI1NTE5AAAAIBx5ZqBdW1bq0U1tqvYQ7kX0cU0oE6bq0N0cV0cV0cV0\n`);
    await expect(
      SshExecutor.connect({ host: '127.0.0.1', port: sshd.port, username: 'root', privateKey: sshd.clientKey, knownHostsFile: other }),
    ).rejects.toMatchObject({ type: 'AuthFailed' });
  });

  it('refuses a host missing from known_hosts', async () => {
    const empty = join(work, 'empty_known_hosts');
    await writeFile(empty, '');
    await expect(
      SshExecutor.connect({ host: '127.0.0.1', port: sshd.port, username: 'root', privateKey: sshd.clientKey, knownHostsFile: empty }),
    ).rejects.toMatchObject({ type: 'AuthFailed' });
  });
});
