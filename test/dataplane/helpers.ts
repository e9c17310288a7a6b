// Test helpers: a receiver child process, disk images with mixed content, digests.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ReceiverEndpoint } from '../../src/dataplane/types.js';
import type { ReceiverEvent, ReceiverOptions } from '../../src/dataplane/receiver.js';
import { openFileSource } from '../../src/dataplane/file-source.js';
import { sha256OfSource } from '../../src/dataplane/digest.js';

const FIXTURE = new URL('./fixtures/receiver-process.ts', import.meta.url).pathname;

export interface ReceiverChild {
  proc: ChildProcess;
  endpoint: ReceiverEndpoint;
  events: ReceiverEvent[];
  /** Resolves with the next event matching `pred` (or one already seen). */
  waitFor(pred: (e: ReceiverEvent) => boolean): Promise<ReceiverEvent>;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const children = new Set<ChildProcess>();

export async function spawnReceiver(opts: Omit<ReceiverOptions, 'onEvent'>): Promise<ReceiverChild> {
  const proc = spawn(process.execPath, ['--import', 'tsx', FIXTURE, JSON.stringify(opts)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const events: ReceiverEvent[] = [];
  const waiters: { pred: (e: ReceiverEvent) => boolean; resolve: (e: ReceiverEvent) => void }[] = [];
  const endpoint = await new Promise<ReceiverEndpoint>((resolve, reject) => {
    proc.on('exit', (code) => reject(new Error(`receiver exited (${code}): ${stderr}`)));
    createInterface({ input: proc.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line) as { ready?: ReceiverEndpoint } & ReceiverEvent;
      if (msg.ready) return resolve(msg.ready);
      events.push(msg);
      for (const w of [...waiters]) {
        if (w.pred(msg)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(msg);
        }
      }
    });
  });
  return {
    proc,
    endpoint,
    events,
    waitFor: (pred) => {
      const seen = events.find(pred);
      if (seen) return Promise.resolve(seen);
      return new Promise((resolve) => waiters.push({ pred, resolve }));
    },
    kill: (signal = 'SIGKILL') =>
      new Promise<void>((resolve) => {
        if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
        proc.once('exit', () => resolve());
        proc.kill(signal);
      }),
  };
}

/** Kills every receiver child still running (afterEach/afterAll). */
export async function killAllReceivers(): Promise<void> {
  await Promise.all(
    [...children].map(
      (p) =>
        new Promise<void>((resolve) => {
          if (p.exitCode !== null || p.signalCode !== null) return resolve();
          p.once('exit', () => resolve());
          p.kill('SIGKILL');
        }),
    ),
  );
}

export async function tempDir(prefix = 'ferry-dp-'): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}

/** A disk image of `size` bytes: random, text and zero regions in rotation (1 MiB each, one odd tail). */
export async function makeMixedDisk(path: string, size: number): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.truncate(size);
    const region = 1024 * 1024;
    const text = Buffer.from('Ferry moves a running VM with its disk. '.repeat(Math.ceil(region / 40)).slice(0, region));
    for (let off = 0, i = 0; off < size; off += region, i++) {
      const len = Math.min(region, size - off);
      const kind = i % 3;
      if (kind === 0) await fh.write(randomBytes(len), 0, len, off);
      else if (kind === 1) await fh.write(text, 0, len, off);
      // kind 2: zeros (a hole)
    }
  } finally {
    await fh.close();
  }
}

export async function sha256OfFile(path: string): Promise<string> {
  const src = await openFileSource(path);
  try {
    return await sha256OfSource(src);
  } finally {
    await src.close();
  }
}
