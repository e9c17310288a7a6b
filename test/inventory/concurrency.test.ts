// Two processes, two connections, one file: both race for the last free slot of node-b, again and
// again. Without the check-and-insert in one write transaction both would win at the same time.
import { afterEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { seedCluster, spec, tempDir } from './helpers.js';

const run = promisify(execFile);
const worker = fileURLToPath(new URL('./reserve-worker.ts', import.meta.url));

interface WorkerResult {
  ok: number;
  full: number;
  other: string[];
  minFreeVcpus: number;
}

describe('concurrent reservations', () => {
  const cleanups: (() => void)[] = [];
  afterEach(() => cleanups.splice(0).forEach((c) => c()));

  it('two processes reserving at once never overcommit a node', async () => {
    const tmp = tempDir();
    cleanups.push(tmp.cleanup);
    const path = join(tmp.dir, 'inventory.db');
    const inv = seedCluster(path);
    cleanups.push(() => inv.close());
    for (const id of ['i-a', 'i-b', 'i-h1', 'i-h2', 'i-h3']) inv.addInstance({ spec: spec(id, { memoryMiB: 100 }), host: 'node-a' });
    // node-b has 4 vCPU; three long-lived reservations leave exactly one free.
    for (const id of ['i-h1', 'i-h2', 'i-h3']) {
      inv.reserve({ migrationId: `hold-${id}`, instanceId: id, node: 'node-b', vcpus: 1, memoryMiB: 100, diskBytes: 1 << 20 });
    }
    const child = async (prefix: string, instance: string): Promise<WorkerResult> => {
      const { stdout } = await run(process.execPath, ['--import', 'tsx', worker, path, prefix, instance, '400'], { timeout: 120_000 });
      return JSON.parse(stdout) as WorkerResult;
    };
    const results = Promise.all([child('ma', 'i-a'), child('mb', 'i-b')]);
    let settled = false;
    results.then(() => (settled = true), () => (settled = true));
    // Both children are up and connected before either starts reserving (or one died: await shows why).
    while (!settled && !(existsSync(`${path}.ready-ma`) && existsSync(`${path}.ready-mb`))) await new Promise((r) => setTimeout(r, 20));
    writeFileSync(`${path}.go`, '');
    const [a, b] = await results;
    expect(a.other).toEqual([]);
    expect(b.other).toEqual([]);
    expect(a.ok + a.full).toBe(400);
    expect(a.ok).toBeGreaterThan(0);
    expect(b.ok).toBeGreaterThan(0);
    // Never both at once: whoever held the last slot saw 0 free, never -1.
    expect(Math.min(a.minFreeVcpus, b.minFreeVcpus)).toBe(0);
    expect(inv.listReservations({ live: true, node: 'node-b' })).toHaveLength(3);
    expect(inv.freeCapacity('node-b').vcpus).toBe(1);
    expect(inv.checkConsistency()).toEqual([]);
  });
});
