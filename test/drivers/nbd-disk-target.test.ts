// NbdDiskTarget over a real qemu-nbd serving a qcow2 image: writes (zeros as WRITE_ZEROES, the
// last sector included) land byte for byte in the image, errors leave the server serving, and the
// export's fixed size is enforced. No lab, no guest: qemu-nbd and qemu-img only.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NbdDiskTarget } from '../../src/drivers/qemu/nbd-disk-target.js';
import { NbdBlockSource } from '../../src/drivers/qemu/nbd-client.js';
import { serveImage, servedImagePid, stopServedImage, type ServedImage } from '../../src/drivers/qemu/qemu-nbd.js';
import { ErrorTypes, FerryError } from '../../src/shared/errors.js';
import { DiskReceiver } from '../../src/dataplane/receiver.js';
import { sendStream } from '../../src/dataplane/sender.js';
import { openFileSource } from '../../src/dataplane/file-source.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let tmp = '';
const servers: ServedImage[] = [];
const targets: NbdDiskTarget[] = [];

async function qcow2(name: string, size = SIZE): Promise<string> {
  const path = join(tmp, name);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(size)]);
  return path;
}

async function serve(path: string, writable = true, name = 'nbd'): Promise<ServedImage> {
  const s = await serveImage({ path, format: 'qcow2', socketPath: join(tmp, `${name}.sock`), writable });
  servers.push(s);
  return s;
}

async function open(s: ServedImage): Promise<NbdDiskTarget> {
  const t = await NbdDiskTarget.open(s.socketPath, s.exportName);
  targets.push(t);
  return t;
}

async function errorOf(p: Promise<unknown>): Promise<FerryError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (err instanceof FerryError) return err;
  throw new Error(`expected a FerryError, got ${err === undefined ? 'success' : String(err)}`);
}

async function asRaw(image: string): Promise<Buffer> {
  const raw = `${image}.raw`;
  await run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
  return readFile(raw);
}

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'ferry-nbd-'));
});
afterEach(async () => {
  for (const t of targets.splice(0)) await t.close().catch(() => {});
  for (const s of servers.splice(0)) await s.stop().catch(() => {});
});
afterAll(() => rm(tmp, { recursive: true, force: true }));

describe('NbdDiskTarget over qemu-nbd (qcow2)', () => {
  it('writes ranges, zeros and the last sector byte-identically into the image', async () => {
    const image = await qcow2('disk.qcow2');
    const s = await serve(image);
    expect(await servedImagePid(s.pidFile)).toBe(s.pid);
    const t = await open(s);
    expect(await t.size()).toBe(SIZE);

    const expected = Buffer.alloc(SIZE);
    const put = async (offset: number, data: Buffer) => {
      await t.write(offset, data);
      data.copy(expected, offset);
    };
    await put(512, randomBytes(1536)); // inside the first 64 KiB cluster, not at its start
    await put(65536 - 1024, randomBytes(3 * 1024)); // across a cluster boundary
    await put(1 * MiB, randomBytes(256 * 1024));
    await put(1 * MiB + 4096 + 512, Buffer.alloc(8192)); // zeros over data, mid-cluster
    await put(2 * MiB, randomBytes(128 * 1024));
    await put(2 * MiB, Buffer.alloc(64 * 1024)); // a whole cluster of zeros over data
    await put(3 * MiB - 512, randomBytes(2 * MiB + 1024)); // a multi-MiB write
    await put(SIZE - 1024, randomBytes(1024)); // the very end
    await t.datasync();

    expect((await t.read(0, SIZE)).equals(expected)).toBe(true);
    // Reads stop short at the end, like a local file's.
    expect((await t.read(SIZE - 512, 4096)).equals(expected.subarray(SIZE - 512))).toBe(true);
    expect((await t.read(SIZE, 512)).length).toBe(0);

    await t.close();
    targets.length = 0;
    await s.stop();
    servers.length = 0;
    expect(await servedImagePid(s.pidFile)).toBeNull();
    expect(existsSync(s.socketPath)).toBe(false);
    expect(existsSync(s.pidFile)).toBe(false);

    // The readiness probe and our clients disconnect cleanly: qemu-nbd logged nothing.
    expect(await readFile(`${s.socketPath}.log`, 'utf8')).toBe('');

    expect((await asRaw(image)).equals(expected)).toBe(true);
    // The zeroed cluster went as WRITE_ZEROES: qcow2 records it as zero, not as a data cluster.
    const { stdout } = await run('qemu-img', ['map', '--output=json', '-f', 'qcow2', image]);
    const map = JSON.parse(stdout) as { start: number; length: number; zero: boolean; data: boolean }[];
    const at2M = map.find((e) => e.start <= 2 * MiB && e.start + e.length > 2 * MiB)!;
    expect(at2M).toMatchObject({ zero: true, data: false });
  });

  it('is what the data plane receiver writes a qcow2 destination through', async () => {
    const size = 16 * MiB;
    const src = Buffer.alloc(size); // zero runs travel as zero frames, then as WRITE_ZEROES or nothing
    randomBytes(3 * MiB).copy(src, 1 * MiB);
    randomBytes(512 * 1024).copy(src, size - 512 * 1024);
    await writeFile(join(tmp, 'src.raw'), src);
    const image = await qcow2('rx.qcow2', size);
    const s = await serve(image, true, 'rx');
    const rx = await DiskReceiver.open({
      host: '127.0.0.1', token: 'nbd', diskPath: image, openDisk: () => NbdDiskTarget.open(s.socketPath), diskSize: size, tls: false, stateFile: join(tmp, 'rx-state.json'),
    });
    const source = await openFileSource(join(tmp, 'src.raw'));
    try {
      const p = await sendStream({ endpoint: rx.endpoint(), source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: size }] }, options: { chunkSize: MiB, codec: 'lzo' } });
      expect(p.ackedOffset).toBe(size);
    } finally {
      await source.close();
      await rx.close();
    }
    await s.stop();
    expect((await asRaw(image)).equals(src)).toBe(true);
  });

  it('refuses a write past the end clearly and keeps serving', async () => {
    const image = await qcow2('end.qcow2');
    const s = await serve(image);
    const t = await open(s);
    const err = await errorOf(t.write(SIZE - 512, randomBytes(1024)));
    expect(err.type).toBe(ErrorTypes.BadInput);
    expect(err.message).toMatch(/outside the 8388608-byte export/);
    const zerr = await errorOf(t.write(SIZE, Buffer.alloc(512)));
    expect(zerr.type).toBe(ErrorTypes.BadInput);

    // The same connection and a new one both still work.
    const data = randomBytes(4096);
    await t.write(SIZE - 4096, data);
    await t.datasync();
    expect((await t.read(SIZE - 4096, 4096)).equals(data)).toBe(true);
    const t2 = await open(s);
    expect((await t2.read(SIZE - 4096, 4096)).equals(data)).toBe(true);
  });

  it('reports an error the server returns, and the connection survives it', async () => {
    const image = await qcow2('ro.qcow2');
    const s = await serve(image, false, 'ro');
    // NbdDiskTarget refuses a read-only export up front...
    expect((await errorOf(NbdDiskTarget.open(s.socketPath))).message).toMatch(/read-only/);
    // ...and a raw client that writes anyway gets the server's error (qemu-nbd 7.2: EINVAL with a
    // message, not EPERM), then reads on over the same connection.
    const { NbdClient } = await import('../../src/drivers/qemu/nbd-client.js');
    const c = await NbdClient.connect({ socketPath: s.socketPath, exportName: '' });
    try {
      const err = await errorOf(c.write(0, randomBytes(512)));
      expect(err.type).toBe(ErrorTypes.DriverError);
      expect(err.message).toMatch(/request failed with E[A-Z]+: .*read-only/);
      expect((await c.read(0, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('refuses to resize the export', async () => {
    const image = await qcow2('size.qcow2');
    const s = await serve(image);
    const t = await open(s);
    await t.truncate(SIZE); // its own size: nothing to do
    for (const size of [SIZE + 512, SIZE - 512]) {
      const err = await errorOf(t.truncate(size));
      expect(err.type).toBe(ErrorTypes.BadInput);
      expect(err.message).toMatch(/fixed size/);
    }
    expect(await t.size()).toBe(SIZE);
  });

  it('fails clearly when qemu-nbd cannot open the image', async () => {
    const bogus = join(tmp, 'not-qcow2.img');
    await writeFile(bogus, randomBytes(64 * 1024));
    const err = await errorOf(serveImage({ path: bogus, format: 'qcow2', socketPath: join(tmp, 'bad.sock'), writable: true }));
    expect(err.type).toBe(ErrorTypes.DriverError);
    expect(err.message).toMatch(/exited before serving.*qcow2/s);
  });

  it('stops a server left behind by a crashed worker, through its pid file, idempotently', async () => {
    const image = await qcow2('orphan.qcow2');
    const socketPath = join(tmp, 'orphan.sock');
    // A "worker" that serves the image, then dies by SIGKILL without stopping it.
    const worker = join(tmp, 'worker.mts');
    const lib = new URL('../../src/drivers/qemu/qemu-nbd.ts', import.meta.url).pathname;
    await writeFile(worker, `import { serveImage } from ${JSON.stringify(lib)};
const s = await serveImage(${JSON.stringify({ path: image, format: 'qcow2', socketPath, writable: true })});
console.log(JSON.stringify({ pid: s.pid, pidFile: s.pidFile }));
setInterval(() => {}, 1000);
`);
    const child = spawn(process.execPath, ['--import', 'tsx', worker], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout! }).once('line', resolve);
      child.once('exit', (code) => reject(new Error(`worker exited (${code})`)));
    });
    const orphan = JSON.parse(line) as { pid: number; pidFile: string };
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    // The server outlived its worker and still serves; a second one on the same pid file is refused.
    expect(await servedImagePid(orphan.pidFile)).toBe(orphan.pid);
    expect(await (await open({ socketPath, exportName: '' } as ServedImage)).size()).toBe(SIZE);
    for (const t of targets.splice(0)) await t.close();
    expect((await errorOf(serveImage({ path: image, format: 'qcow2', socketPath, writable: true }))).message).toMatch(/still runs/);

    await stopServedImage(orphan.pidFile);
    expect(await servedImagePid(orphan.pidFile)).toBeNull();
    // Gone, or a zombie its new parent (init here) has not reaped yet.
    const stat = await readFile(`/proc/${orphan.pid}/stat`, 'utf8').catch(() => '');
    expect(stat === '' || /\) Z /.test(stat)).toBe(true);
    expect(existsSync(orphan.pidFile)).toBe(false);
    expect(existsSync(socketPath)).toBe(false);
    await stopServedImage(orphan.pidFile); // no pid file: nothing to do
    // A pid file naming a live process that is not qemu-nbd is not acted on (this test runner lives on).
    await writeFile(orphan.pidFile, `${process.pid}\n`);
    await stopServedImage(orphan.pidFile);
    expect(existsSync(orphan.pidFile)).toBe(false);
    // The image's lock is released: it can be served anew.
    const again = await serve(image, true, 'orphan');
    expect(await (await open(again)).size()).toBe(SIZE);
  });

  it("NbdBlockSource asks base:allocation where the zeros are: a qcow2's unwritten clusters, never its data", async () => {
    const image = await qcow2('zeros.qcow2');
    const w = await open(await serve(image, true, 'zw'));
    await w.write(MiB, randomBytes(MiB));
    await w.write(5 * MiB, randomBytes(64 * 1024));
    await w.datasync();
    await w.close();
    for (const sv of servers.splice(0)) await sv.stop();
    const src = await NbdBlockSource.open((await serve(image, false, 'zr')).socketPath, '');
    try {
      const zeros = await src.zeroExtents();
      const covers = (off: number, len: number) => zeros.some((z) => z.offset <= off && off + len <= z.offset + z.length);
      expect(covers(0, MiB), 'before the first write').toBe(true);
      expect(covers(2 * MiB, 3 * MiB), 'between the writes').toBe(true);
      expect(covers(7 * MiB, MiB), 'after the last write').toBe(true);
      for (const z of zeros) {
        expect(z.offset + z.length <= MiB || z.offset >= 2 * MiB, 'the 1 MiB of data is not zero').toBe(true);
        expect(z.offset + z.length <= 5 * MiB || z.offset >= 5 * MiB + 64 * 1024, 'nor the 64 KiB').toBe(true);
      }
    } finally {
      await src.close();
    }
  });

  it('serves a locked image read-only with forceShare (a stopped QEMU still holding it), and not without', async () => {
    const image = await qcow2('locked.qcow2');
    const w = await open(await serve(image, true, 'lw')); // holds the image's write lock
    await w.write(0, Buffer.alloc(4096, 7));
    await w.datasync();
    const refused = await errorOf(serveImage({ path: image, format: 'qcow2', socketPath: join(tmp, 'lr.sock'), writable: false }));
    expect(refused.message).toMatch(/lock/);
    const shared = await serveImage({ path: image, format: 'qcow2', socketPath: join(tmp, 'ls.sock'), writable: false, forceShare: true });
    servers.push(shared);
    const src = await NbdBlockSource.open(shared.socketPath, '');
    try {
      expect((await src.read(0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
    } finally {
      await src.close();
    }
  });
});
