// libvirt end to end: the whole of Ferry (Temporal workflow, controller and node workers, the TLS
// data plane and tunnel, SQLite inventory, the CLI) on two hosts that each run their own libvirtd
// (Debian's, in the node's network and mount namespaces), moving a guest made the way an operator
// makes one: a domain XML with a raw and a qcow2 disk, `virsh define`, `virsh start`. Ferry learns
// of it from `ferry node sync`. The assertions are the user's: the domain runs on exactly one
// host, its counter never went back, every fsync'ed record is on both disks, the disks are
// byte-identical, its MAC is kept, the inventory adds up, and nothing is left behind.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { LAB_IMAGE_DIR, LAB_MAPPED_DIR, startLibvirtLab, type LibvirtLab } from '../../src/labs/libvirt/libvirt-lab.js';
import { labDomainDiskPath, labRecbaseMiB, operatorDomainXml, type LabDomainDisk } from '../../src/labs/libvirt/lab-domain.js';
import { pickAccelerator } from '../../src/drivers/qemu/accelerator.js';
import { startProber, stat, quiesce, type GuestStat } from '../../src/labs/guest-client.js';
import type { MigrationResult } from '../../src/shared/messages.js';
import { phaseOf, readRecords, startMigration, timedSetup, waitFor } from './helpers.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;
const ID = 'lv1';
const MAC = '52:54:00:3a:71:01';
const DISKS: LabDomainDisk[] = [
  { vdev: 'vda', format: 'raw', bytes: 48 * MiB },
  { vdev: 'vdb', format: 'qcow2', bytes: 32 * MiB },
];
const DISK_BYTES = 80 * MiB;
/** Random bytes at the start of vda: 16 MiB take a minute at the cancel test's 2 Mbit/s. */
const RANDOM_MIB = 16;
let lab: LibvirtLab;
const timings: Record<string, number> = {};

const addr = (node: string) => lab.guestAddresses().find((a) => a.node === node)!;
const answersOn = (node: string): Promise<GuestStat | null> => stat(addr(node).host, addr(node).port).catch(() => null);

async function waitAnswer(node: string, ms = 180_000): Promise<GuestStat> {
  const deadline = Date.now() + ms;
  for (;;) {
    const s = await answersOn(node);
    if (s) return s;
    if (Date.now() > deadline) throw new Error(`guest never answered on ${node}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** Makes the guest as an operator would: images with qemu-img, the XML, virsh define and start. */
async function defineGuest(node: string): Promise<void> {
  for (const d of DISKS) await lab.hosts.execOn(node, 'qemu-img', ['create', '-q', '-f', d.format, labDomainDiskPath(ID, d), String(d.bytes)]);
  // Data on the raw disk (incompressible, so the bulk copy takes its time on a capped link).
  const fh = await open(lab.hosts.outside(node, labDomainDiskPath(ID, DISKS[0]!)), 'r+');
  await fh.write(randomBytes(RANDOM_MIB * MiB), 0, RANDOM_MIB * MiB, 0);
  await fh.close();
  const type = (await pickAccelerator()) === 'kvm' ? 'kvm' : 'qemu';
  const dir = await mkdtemp(join(tmpdir(), 'ferry-libvirt-xml-'));
  try {
    const xml = join(dir, `${ID}.xml`);
    await writeFile(xml, operatorDomainXml({ id: ID, type, mac: MAC, disks: DISKS, rate: 4, ...lab.bootFiles }));
    await lab.hosts.execOn(node, 'virsh', ['define', xml]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  await lab.hosts.execOn(node, 'virsh', ['start', ID]);
}

/** The guest's QEMU as libvirt runs it: Ferry's bitmaps, exports and NBD server must all be gone after a rollback. */
async function ferryTracesInQemu(node: string): Promise<string[]> {
  const q = lab.hosts.host(node).virsh.qmp(ID);
  const traces: string[] = [];
  const nodes = await q.execute<Array<{ 'node-name': string; 'dirty-bitmaps'?: Array<{ name: string }> }>>('query-named-block-nodes', { flat: true });
  for (const n of nodes) for (const b of n['dirty-bitmaps'] ?? []) traces.push(`bitmap ${n['node-name']}/${b.name}`);
  for (const e of await q.execute<Array<{ id: string }>>('query-block-exports')) traces.push(`export ${e.id}`);
  const jobs = await q.execute<unknown[]>('query-block-jobs');
  if (jobs.length) traces.push(`${jobs.length} block jobs`);
  return traces;
}

/** Records on each disk of the guest on `node` (qcow2 read through qemu-img, shared with the running guest). */
async function recordsOn(node: string): Promise<Record<string, Set<number>>> {
  return recordsOnPaths(node, DISKS.map((d) => labDomainDiskPath(ID, d)));
}

async function recordsOnPaths(node: string, paths: string[]): Promise<Record<string, Set<number>>> {
  const out: Record<string, Set<number>> = {};
  const dir = await mkdtemp(join(tmpdir(), 'ferry-libvirt-rec-'));
  try {
    for (const [i, d] of DISKS.entries()) {
      let file = lab.hosts.outside(node, paths[i]!);
      if (d.format === 'qcow2') {
        const raw = join(dir, `${d.vdev}.raw`);
        await execFileP('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, raw]);
        file = raw;
      }
      out[d.vdev] = await readRecords(file, labRecbaseMiB(d.bytes));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return out;
}

const usage = (node: string) => lab.inventory.freeCapacity(node);

beforeAll(async () => {
  await timedSetup('libvirt e2e setup', 480_000, async (step) => {
    const t0 = Date.now();
    step('network, two libvirtds, Temporal, inventory');
    lab = await startLibvirtLab({ dir: '/var/tmp/ferry-libvirt-e2e', linkMbit: 100, log: (l) => console.log(l) });
    step('controller and node workers');
    await lab.startWorkers();
    timings.labMs = Date.now() - t0;
    step(`${ID} on node-a: qemu-img, virsh define, virsh start`);
    await defineGuest('node-a');
    step(`${ID} answering`);
    await waitAnswer('node-a');
    timings.guestBootMs = Date.now() - t0 - timings.labMs;
    step('ready');
  });
}, 600_000);

afterAll(async () => {
  console.log('libvirt e2e timings', JSON.stringify(timings));
  await lab?.close();
}, 120_000);

describe("libvirt end to end: an operator's domain (virsh define, a raw and a qcow2 disk)", () => {
  it('`ferry node sync` imports it from its XML: both disks with format and size, its MAC; again, it updates, never duplicates', async () => {
    const r = await lab.sync('node-a');
    expect(r.refused).toEqual([]);
    expect(r.added).toEqual([ID]);
    const spec = lab.inventory.getInstance(ID).spec;
    expect(spec).toMatchObject({ hypervisor: 'libvirt', vcpus: 1, memoryMiB: 128, startedBy: 'libvirt', nics: [{ mac: MAC, bridge: 'br0' }] });
    expect(spec.disks).toEqual(DISKS.map((d) => ({ vdev: d.vdev, kind: 'file', path: labDomainDiskPath(ID, d), format: d.format, bytes: d.bytes })));
    expect(lab.inventory.getInstance(ID).host).toBe('node-a');
    const again = await lab.sync('node-a');
    expect(again.added).toEqual([]);
    expect(lab.inventory.listInstances({ host: 'node-a' }).map((i) => i.id)).toEqual([ID]);
  });

  it('a cancel during the bulk copy: the domain runs on at the source, no bitmap, export or job is left in its QEMU, nothing on the destination', async () => {
    const before = { a: usage('node-a'), b: usage('node-b') };
    // 2 Mbit/s: the bulk copy of 80 MiB lasts minutes, the cancel lands inside it.
    const handle = await startMigration(lab, { instanceId: ID, destination: 'node-b', options: { bandwidth: '2Mbit' } });
    await waitFor(handle, (p) => phaseOf(p) === 'bulk-copy' && (p.disk?.bytesDone ?? 0) > 0, 180_000);
    expect(await ferryTracesInQemu('node-a'), 'tracking is on while the bulk copy runs').not.toEqual([]);
    await handle.cancel();
    await handle.result().catch(() => undefined);
    expect((await lab.domains('node-a')).running).toEqual([ID]);
    expect(await waitAnswer('node-a', 30_000)).toBeTruthy();
    expect(await ferryTracesInQemu('node-a')).toEqual([]);
    expect(await lab.leftovers(ID, 'node-b'), 'nothing defined or created on the destination').toEqual([]);
    expect(await lab.leftovers(ID, 'node-a')).toEqual(['domain lv1', labDomainDiskPath(ID, DISKS[0]!), labDomainDiskPath(ID, DISKS[1]!)].sort());
    expect(lab.inventory.getInstance(ID).host).toBe('node-a');
    expect(lab.inventory.listReservations({ live: true })).toEqual([]);
    expect(usage('node-a')).toEqual(before.a);
    expect(usage('node-b')).toEqual(before.b);
  });

  it('`ferry migrate` moves it while it writes: only on the destination, counter continued, every record on both disks, disks identical, MAC kept, source disks gone and domain undefined', async () => {
    const t0 = Date.now();
    const before = { a: usage('node-a'), b: usage('node-b') };
    const prober = startProber(lab.guestAddresses(), 500);
    await new Promise((r) => setTimeout(r, 2000));
    const m = await lab.ferry(['migrate', ID, '--to', 'node-b', '--verify', '--json']);
    await new Promise((res) => setTimeout(res, 3000));
    const probe = await prober.stop();
    expect(m.code, m.stderr).toBe(0);
    const r = JSON.parse(m.stdout.trim().split('\n').pop()!) as MigrationResult;
    Object.assign(timings, { migrateMs: Date.now() - t0, workflowMs: r.totalMs, downtimeMs: r.downtimeMs, clientGapMs: probe.longestGapMs });
    console.log('libvirt migration result', JSON.stringify({ ...r, timeline: r.timeline.filter((e) => e.detail) }), JSON.stringify(probe));

    expect(r.outcome).toBe('migrated');
    expect(r.disksIdentical, 'SHA-256 of each disk on both hosts, source paused, destination not yet running').toEqual({ vda: true, vdb: true });
    expect(probe.counterReset, 'the in-memory counter never went back').toBe(false);
    const after = await waitAnswer('node-b', 60_000);
    expect(after.counter, 'memory moved, not rebooted').toBeGreaterThan(probe.firstCounter ?? Infinity);

    expect((await lab.domains('node-b')).running).toEqual([ID]);
    expect((await lab.domains('node-a')).all, 'the source domain is undefined').toEqual([]);
    expect(await answersOn('node-a')).toBeNull();
    expect(await lab.leftovers(ID, 'node-a'), 'source disks and Ferry state gone').toEqual([]);
    expect(await lab.leftovers(ID, 'node-b'), 'the destination holds the domain and its two disks, and nothing of Ferry').toEqual(
      ['domain lv1', labDomainDiskPath(ID, DISKS[0]!), labDomainDiskPath(ID, DISKS[1]!)].sort(),
    );
    const xml = await lab.hosts.host('node-b').virsh.run(['dumpxml', '--inactive', '--domain', ID]);
    expect(xml, 'MAC unchanged').toContain(MAC);
    expect(xml, 'persistent on the destination, disks where they were').toContain(labDomainDiskPath(ID, DISKS[1]!));
    const { stdout: info } = await execFileP('qemu-img', ['info', '-U', '--output=json', lab.hosts.outside('node-b', labDomainDiskPath(ID, DISKS[1]!))]);
    expect(JSON.parse(info)).toMatchObject({ format: 'qcow2', 'virtual-size': DISKS[1]!.bytes });

    expect(lab.inventory.getInstance(ID).host).toBe('node-b');
    expect(lab.inventory.listReservations({ live: true })).toEqual([]);
    expect(lab.inventory.checkConsistency()).toEqual([]);
    expect(usage('node-a').diskBytes).toBe(before.a.diskBytes + DISK_BYTES);
    expect(usage('node-b').diskBytes).toBe(before.b.diskBytes - DISK_BYTES);
    expect(usage('node-b').memoryMiB).toBe(before.b.memoryMiB - 128);

    // Every record the guest made durable is on both destination disks.
    const lastSeq = await quiesce(addr('node-b').host, addr('node-b').port);
    expect(lastSeq).toBeGreaterThan(0);
    const recs = await recordsOn('node-b');
    for (const d of DISKS) {
      const missing = Array.from({ length: lastSeq }, (_, i) => i + 1).filter((n) => !recs[d.vdev]!.has(n));
      expect(missing, `durable records missing on ${d.vdev}`).toEqual([]);
    }
  });

  it("moves it back to node-a, whose pathMap puts incoming disks in another folder: the domain's XML there names them, the disks match, the records are there", async () => {
    const m = await lab.ferry(['migrate', ID, '--to', 'node-a', '--verify', '--json']);
    expect(m.code, m.stderr).toBe(0);
    const r = JSON.parse(m.stdout.trim().split('\n').pop()!) as MigrationResult;
    expect(r.outcome).toBe('migrated');
    expect(r.disksIdentical).toEqual({ vda: true, vdb: true });
    const mapped = DISKS.map((d) => labDomainDiskPath(ID, d).replace(`${LAB_IMAGE_DIR}/`, `${LAB_MAPPED_DIR}/`));
    expect((await lab.domains('node-a')).running).toEqual([ID]);
    expect((await lab.domains('node-b')).all).toEqual([]);
    expect(await lab.leftovers(ID, 'node-b')).toEqual([]);
    expect(await lab.leftovers(ID, 'node-a')).toEqual(['domain lv1', ...mapped].sort());
    const xml = await lab.hosts.host('node-a').virsh.run(['dumpxml', '--domain', ID]);
    for (const p of mapped) expect(xml, 'the running domain uses the mapped disks').toContain(`file='${p}'`);
    const persistent = await lab.hosts.host('node-a').virsh.run(['dumpxml', '--inactive', '--domain', ID]);
    for (const p of mapped) expect(persistent, 'and so does its persistent definition').toContain(`file='${p}'`);
    expect(lab.inventory.getInstance(ID).spec.disks.map((d) => d.path)).toEqual(mapped);
    expect(lab.inventory.checkConsistency()).toEqual([]);
    expect(await waitAnswer('node-a', 60_000)).toBeTruthy();
    // The records the guest made durable before it was quiesced crossed twice.
    const recs = await recordsOnPaths('node-a', mapped);
    for (const d of DISKS) expect(recs[d.vdev]!.size, `records on ${d.vdev}`).toBeGreaterThan(0);
    expect([...recs.vda!].sort((a, b) => a - b)).toEqual([...recs.vdb!].sort((a, b) => a - b));
  });
});
