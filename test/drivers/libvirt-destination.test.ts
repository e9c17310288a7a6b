// The libvirt driver's destination side without a libvirtd: disks created at the XML's paths
// (sparse raw, qcow2 by qemu-img), recorded so a rollback removes exactly what Ferry made, and
// never a file that was there before; qcow2 written through qemu-nbd and read back by qemu-img.
// The memory URI the workflow carries between hosts is checked as hostile input.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { checkDestinationDisks, createDestinationDisks, createdDisks, openDestinationTarget, removeCreatedDisks } from '../../src/drivers/libvirt/destination-disks.js';
import { decodeMemoryUri, encodeMemoryUri } from '../../src/drivers/libvirt/memory-handover.js';
import { cleanError } from '../../src/drivers/libvirt/virsh.js';
import type { DiskSpec } from '../../src/shared/instance.js';
import { FerryError } from '../../src/shared/errors.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
let dir: string;
let state: string;
let disks: DiskSpec[];

async function errorOf(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(FerryError);
    return e as FerryError;
  }
  throw new Error('expected a FerryError');
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-lvdest-'));
  state = join(dir, 'state', 'g1');
  disks = [
    { vdev: 'vda', kind: 'file', path: join(dir, 'g1-vda.raw'), format: 'raw', bytes: 8 * MiB },
    { vdev: 'vdb', kind: 'file', path: join(dir, 'g1-vdb.qcow2'), format: 'qcow2', bytes: 4 * MiB },
  ];
});
afterEach(async () => {
  await removeCreatedDisks(state).catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

describe('libvirt destination disks', () => {
  it('creates a sparse raw file and a qcow2 of the same virtual size, idempotently, and a rollback removes exactly those', async () => {
    await checkDestinationDisks(state, disks);
    await createDestinationDisks(state, disks);
    await createDestinationDisks(state, disks); // a retried prepare
    expect((await stat(disks[0]!.path)).size).toBe(8 * MiB);
    expect((await stat(disks[0]!.path)).blocks).toBe(0);
    const { stdout } = await execFileP('qemu-img', ['info', '--output=json', disks[1]!.path]);
    expect(JSON.parse(stdout)).toMatchObject({ format: 'qcow2', 'virtual-size': 4 * MiB });
    expect(await createdDisks(state)).toEqual(disks.map((d) => d.path));
    // A retried check still passes: the files are Ferry's own.
    await checkDestinationDisks(state, disks);
    const other = join(dir, 'operator.img');
    await writeFile(other, 'mine');
    await removeCreatedDisks(state);
    await expect(stat(disks[0]!.path)).rejects.toThrow();
    await expect(stat(disks[1]!.path)).rejects.toThrow();
    expect(await readFile(other, 'utf8')).toBe('mine');
  });

  it('refuses, before creating anything, a path that holds a file Ferry did not make, a missing folder, and a disk that does not fit', async () => {
    await writeFile(disks[1]!.path, 'an operator file');
    const taken = await errorOf(checkDestinationDisks(state, disks));
    expect(taken.type).toBe('InvalidDestination');
    expect(taken.message).toMatch(/already exists.*never overwrites/);
    const gone = await errorOf(checkDestinationDisks(state, [{ ...disks[0]!, path: join(dir, 'no-such-folder', 'x.raw') }]));
    expect(gone.message).toMatch(/folder .* does not exist/);
    const big = await errorOf(checkDestinationDisks(state, [{ ...disks[0]!, bytes: Number.MAX_SAFE_INTEGER - 1 }]));
    expect(big.type).toBe('DestinationDiskFull');
    // A file that appears between the check and the prepare is left alone, not adopted.
    const late = await errorOf(createDestinationDisks(state, disks));
    expect(late.message).toMatch(/appeared on this host after the checks/);
    expect(await readFile(disks[1]!.path, 'utf8')).toBe('an operator file');
  });

  it('writes a qcow2 through qemu-nbd: what the receiver wrote is what qemu-img reads, and the server is gone after close', async () => {
    await createDestinationDisks(state, disks);
    const t = await openDestinationTarget(state, disks[1]!);
    const data = Buffer.alloc(MiB, 0x5a);
    await t.write(MiB, data);
    await t.datasync();
    await t.close();
    const raw = join(dir, 'out.raw');
    await execFileP('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disks[1]!.path, raw]);
    const back = await readFile(raw);
    expect(back.subarray(MiB, 2 * MiB).equals(data)).toBe(true);
    expect(back.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    const { stdout } = await execFileP('pgrep', ['-af', 'qemu-nbd']).catch(() => ({ stdout: '' }));
    expect(stdout).not.toContain(disks[1]!.path);
  });
});

describe('libvirt memory URI (carried by the workflow between hosts)', () => {
  const plan = { tunnel: { host: '10.0.0.2', port: 40000, token: 'ab'.repeat(32), certPem: '-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n' }, memoryPort: 49200 };

  it('round-trips', () => {
    expect(decodeMemoryUri(encodeMemoryUri(plan))).toEqual(plan);
  });

  it('refuses anything else with a clear error', () => {
    const bad = (o: unknown) => `ferry-tunnel:${Buffer.from(JSON.stringify(o)).toString('base64url')}`;
    for (const uri of [
      'tcp:10.0.0.2:49200',
      'ferry-tunnel:not-base64-json',
      bad({ ...plan, memoryPort: 22 }),
      bad({ ...plan, tunnel: { ...plan.tunnel, token: 'short' } }),
      bad({ ...plan, extra: 'x' }),
      bad({ tunnel: plan.tunnel }),
    ]) {
      expect(() => decodeMemoryUri(uri), uri).toThrow(FerryError);
    }
  });

  it("virsh's messages become one line", () => {
    expect(cleanError('error: failed to get domain \'x\'\nerror: Domain not found\n')).toBe("failed to get domain 'x'; Domain not found");
  });
});
