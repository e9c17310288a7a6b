// What both labs (QEMU and Xen) need: how to run Ferry's own scripts, a child process to its end,
// waiting for workers, and lab disks with real content.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, open, rename, truncate } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@temporalio/client';

const MiB = 1024 * 1024;
export const repoRoot = fileURLToPath(new URL('../..', import.meta.url));

/** How to run the `ferry` CLI: the built one when running from dist, else the sources through tsx. */
export function ferryCommand(): string[] {
  if (import.meta.url.endsWith('.js')) return [process.execPath, join(repoRoot, 'dist/cli/ferry.js')];
  return [process.execPath, '--import', 'tsx', join(repoRoot, 'src/cli/ferry.ts')];
}

/** How to run one of the lab's own scripts (src/labs/NAME). */
export function nodeScript(name: string): string[] {
  if (import.meta.url.endsWith('.js')) return [process.execPath, join(repoRoot, `dist/labs/${name}.js`)];
  return [process.execPath, '--import', 'tsx', join(repoRoot, `src/labs/${name}.ts`)];
}

/**
 * A raw disk of `bytes`: an ext4 file system built from `contentDir` (cached per tree and size in
 * `cacheDir`, copied sparse), or zeros with `randomMiB` MiB of random bytes up front.
 */
export async function makeDisk(path: string, bytes: number, contentDir?: string, randomMiB = 0, cacheDir = join(dirname(path), '..', '..', '..', 'images')) {
  if (contentDir && existsSync(contentDir)) {
    // mkfs.ext4 -d of a big tree takes minutes under load: build each (tree, size) once, then
    // copy it sparse for every guest.
    const cached = join(cacheDir, `${contentDir.replace(/[^a-zA-Z0-9]+/g, '_')}-${bytes}.ext4`);
    if (!existsSync(cached)) {
      await mkdir(dirname(cached), { recursive: true });
      const tmp = `${cached}.tmp`;
      await (await open(tmp, 'w')).close();
      await truncate(tmp, bytes);
      await runToEnd(spawn('mkfs.ext4', ['-q', '-F', '-E', 'root_owner=0:0', '-d', contentDir, tmp, `${Math.floor(bytes / 1024)}k`], { stdio: ['ignore', 'pipe', 'pipe'] }), 'mkfs.ext4');
      await rename(tmp, cached);
    }
    await runToEnd(spawn('cp', ['--sparse=always', cached, path], { stdio: ['ignore', 'pipe', 'pipe'] }), 'cp');
  } else {
    const fh = await open(path, 'w');
    await fh.truncate(bytes);
    for (let i = 0; i < Math.min(randomMiB, bytes / MiB); i++) await fh.write(randomBytes(MiB), 0, MiB, i * MiB);
    await fh.close();
  }
}

export function runToEnd(child: ChildProcess, what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout?.on('data', (d) => (out += d));
    child.stderr?.on('data', (d) => (out += d));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${what} failed (exit ${code}): ${out.slice(-2000)}`))));
  });
}

/** Waits until every task queue has a poller, so a test never races a worker's start. */
export async function waitForPollers(client: Client, queues: string[], timeoutMs = 120_000) {
  const deadline = Date.now() + timeoutMs;
  for (const q of queues) {
    for (;;) {
      const r = await client.workflowService.describeTaskQueue({ namespace: 'default', taskQueue: { name: q }, taskQueueType: q === 'ferry-control' ? 1 : 2 });
      if ((r.pollers?.length ?? 0) > 0) break;
      if (Date.now() > deadline) throw new Error(`no worker polls ${q} after ${timeoutMs} ms (see the worker logs)`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export type Launch = (cmd: string, args: string[], opts: SpawnOptions) => ChildProcess;

/**
 * The lab's `ferry worker` processes, each logging to `<logDir>/worker-<key>.log`. `launch` starts
 * one (a plain spawn, or inside a network namespace).
 */
export function labWorkers(logDir: string) {
  const workers = new Map<string, ChildProcess>();
  const stop = async (key: string, signal: NodeJS.Signals = 'SIGTERM') => {
    const child = workers.get(key);
    if (!child || child.exitCode !== null) return;
    workers.delete(key);
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  return {
    start(key: string, args: string[], env: NodeJS.ProcessEnv, launch: Launch = spawn): ChildProcess {
      const [cmd, ...rest] = ferryCommand();
      const logFile = createWriteStream(join(logDir, `worker-${key}.log`), { flags: 'a' });
      const child = launch(cmd!, [...rest, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
      child.stdout?.pipe(logFile);
      child.stderr?.pipe(logFile);
      workers.set(key, child);
      return child;
    },
    stop,
    async stopAll() {
      for (const key of [...workers.keys()]) await stop(key);
    },
  };
}
