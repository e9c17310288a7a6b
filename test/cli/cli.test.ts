// The `ferry` and `euca-migrate-instance` commands as a script sees them: help, JSON output, exit
// codes. Runs the real CLI in a child process against a real SQLite inventory file.
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
let dir: string;

function run(bin: 'ferry' | 'euca-migrate-instance', args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join(root, `src/cli/${bin}.ts`), ...args],
      { env: { ...process.env, FERRY_INVENTORY: join(dir, 'inv.db'), FERRY_TEMPORAL_ADDRESS: '127.0.0.1:1' }, cwd: root },
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'ferry-cli-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('ferry CLI', () => {
  it('lists every command in --help', async () => {
    const r = await run('ferry', ['--help']);
    expect(r.code).toBe(0);
    for (const c of ['migrate', 'status', 'cancel', 'list', 'history', 'replay', 'node', 'instance', 'worker']) expect(r.stdout).toMatch(new RegExp(`^\\s+${c}\\b`, 'm'));
  });

  it('prints JSON arrays for node and instance lists, and registers nodes and instances', async () => {
    expect(JSON.parse((await run('ferry', ['node', 'list', '--json'])).stdout)).toEqual([]);
    const add = await run('ferry', ['node', 'add', 'node-x', '--hypervisor', 'qemu', '--data-address', '127.0.0.1', '--vcpus', '4', '--memory', '4GiB', '--disk', '10GiB', '--json']);
    expect(add.code, add.stderr).toBe(0);
    const spec = { hypervisor: 'qemu', vcpus: 1, memoryMiB: 512, disks: [{ vdev: 'vda', kind: 'file', path: '/var/lib/x.raw', format: 'raw', bytes: 1 << 30 }] };
    const inst = await run('ferry', ['instance', 'add', 'i-1', '--host', 'node-x', '--spec', JSON.stringify(spec)]);
    expect(inst.code, inst.stderr).toBe(0);
    const nodes = JSON.parse((await run('ferry', ['node', 'list', '--json'])).stdout);
    expect(nodes).toHaveLength(1);
    expect(nodes[0].free).toEqual({ vcpus: 3, memoryMiB: 3584, diskBytes: 9 * (1 << 30) });
    const instances = JSON.parse((await run('ferry', ['instance', 'list', '--json'])).stdout);
    expect(instances.map((i: { id: string; host: string }) => [i.id, i.host])).toEqual([['i-1', 'node-x']]);
  });

  it('gives scripts distinct exit codes: usage 2, not found 3', async () => {
    expect((await run('ferry', ['migrate', 'i-1'])).code).toBe(2); // --to missing
    expect((await run('ferry', ['migrate', '../../etc', '--to', 'node-x'])).code).toBe(2);
    expect((await run('ferry', ['instance', 'show', 'i-none'])).code).toBe(3);
    expect((await run('ferry', ['no-such-command'])).code).toBe(2);
    expect((await run('euca-migrate-instance', ['-i', 'i-1'])).code).not.toBe(0); // -d missing
  });

  it('refuses a bad option at once, naming the flag and its limit, before reaching Temporal', async () => {
    for (const [flags, re] of [
      [['--chunk-size', '0'], /--chunk-size: must be a multiple of 4KiB between 4KiB and 64MiB/],
      [['--downtime', '999s'], /--downtime: must be at most 20s/],
      [['--max-rounds', '1000'], /--max-rounds: must be a whole number from 1 to 64/],
      [['--bandwidth', 'fast'], /--bandwidth: "fast" is not a bandwidth/],
    ] as const) {
      const r = await run('ferry', ['migrate', 'i-x', '--to', 'node-b', '--detach', ...flags]);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(re);
      expect(r.stdout).not.toMatch(/started/);
    }
  });

  it('ends in a message, not a stack trace, when Temporal cannot be reached', async () => {
    for (const args of [['history', 'i-none'], ['list', '--outcome', 'failed']]) {
      const r = await run('ferry', args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toMatch(/^ferry: /);
      expect(r.stderr, 'no TypeError from a numeric error code').not.toMatch(/TypeError|\n\s+at /);
    }
    expect((await run('ferry', ['list', '--outcome', 'maybe'])).code).toBe(2);
    expect((await run('ferry', ['status', "x' OR 1=1"])).code).toBe(2);
  });

  it('refuses a hostile id in the inventory with a clear message', async () => {
    const r = await run('ferry', ['node', 'add', 'Node;rm', '--hypervisor', 'qemu', '--data-address', '127.0.0.1', '--vcpus', '1', '--memory', '1GiB', '--disk', '1GiB']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/name/);
  });
});
