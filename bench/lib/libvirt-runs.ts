// The paper bench's libvirt section: one run moves an operator's domain (defined with virsh from a
// plain XML, one raw ext4 disk of real files) from node-a to node-b of the libvirt lab, either with
// Ferry's libvirt driver (`ferry node sync`, then the migrateInstance workflow) or with libvirt's
// own `virsh migrate --live --copy-storage-all`, on the same guest, link and workload. The client
// probes the guest throughout; the link counters and samples are the QEMU section's.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LibvirtLab } from '../../src/labs/libvirt/libvirt-lab.js';
import { labNodes } from '../../src/labs/lab-network.js';
import { makeDisk } from '../../src/labs/lab-common.js';
import { labDomainDiskPath, operatorDomainXml } from '../../src/labs/libvirt/lab-domain.js';
import { pickAccelerator } from '../../src/drivers/qemu/accelerator.js';
import { CONTROL_TASK_QUEUE, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId } from '../../src/shared/names.js';
import { SA_DESTINATION, SA_INSTANCE } from '../../src/shared/search-attributes.js';
import type { MigrationResult } from '../../src/shared/messages.js';
import { probeAround, spansFromTimeline, waitForGuest, type RunRecord, type RunSettings } from './paper-runs.js';

const MiB = 1024 * 1024;
const A = labNodes['node-a'];
const B = labNodes['node-b'];

export type LibvirtMethod = 'ferry-libvirt' | 'virsh';

export async function runLibvirtOnce(lab: LibvirtLab, method: LibvirtMethod, run: number, s: RunSettings): Promise<RunRecord> {
  const id = `lvb-${method === 'virsh' ? 'virsh' : 'ferry'}-${run}`;
  const disk = { vdev: 'vda' as const, format: 'raw' as const, bytes: s.diskMiB * MiB };
  const rec: RunRecord = {
    method, run, instanceId: id, ok: false, totalMs: 0, downtimeMs: 0, clientGapMs: 0,
    bytesOnWire: { aToB: 0, bToA: 0, total: 0 }, memoryBytes: 0, phases: [], requests: { sent: 0, answered: 0 }, samples: [], link: [],
  };
  try {
    s.log(`${id}: virsh define + start on node-a (${s.memoryMiB} MiB memory, ${s.diskMiB} MiB ext4 disk of ${s.contentDir}, ${s.rate} records/s)`);
    await makeDisk(lab.hosts.outside(A.name, labDomainDiskPath(id, disk)), disk.bytes, s.contentDir, 0, join(lab.dir, 'images'));
    const dir = await mkdtemp(join(tmpdir(), 'ferry-bench-xml-'));
    try {
      await writeFile(join(dir, 'd.xml'), operatorDomainXml({ id, type: (await pickAccelerator()) === 'kvm' ? 'kvm' : 'qemu', memoryMiB: s.memoryMiB, rate: s.rate, mac: '52:54:00:3b:00:01', disks: [disk], ...lab.bootFiles }));
      await lab.hosts.execOn(A.name, 'virsh', ['define', join(dir, 'd.xml')]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    await lab.hosts.execOn(A.name, 'virsh', ['start', id]);
    const addrs = lab.guestAddresses();
    await waitForGuest(addrs[0]!.host, addrs[0]!.port);
    if (method === 'ferry-libvirt') await lab.sync(A.name);

    s.log(`${id}: migrating with ${method}`);
    await probeAround(addrs, s, rec, (t0) => (method === 'virsh' ? migrateWithVirsh(lab, id, disk.bytes, rec, t0) : migrateWithFerry(lab, id, rec, t0)));
    return rec;
  } catch (err) {
    rec.error = err instanceof Error ? err.message : String(err);
    s.log(`${id}: FAILED: ${rec.error}`);
    return rec;
  } finally {
    await lab.destroyGuest(id).catch(() => undefined);
  }
}

async function migrateWithFerry(lab: LibvirtLab, id: string, rec: RunRecord, t0: number): Promise<number> {
  const handle = await lab.client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: migrationWorkflowId(id),
    args: [{ instanceId: id, destination: B.name, options: {} }],
    typedSearchAttributes: [
      { key: SA_INSTANCE, value: id },
      { key: SA_DESTINATION, value: B.name },
    ],
  });
  const r = (await handle.result()) as MigrationResult;
  const endAt = Date.now();
  if (r.outcome !== 'migrated') rec.error = `rolled back: ${r.reason ?? 'no reason given'}`;
  Object.assign(rec, { totalMs: r.totalMs, downtimeMs: r.downtimeMs, qemuDowntimeMs: r.hypervisorDowntimeMs, diskWireBytes: r.diskWireBytes, memoryBytes: r.memoryBytes, rounds: r.rounds, diskIdentical: r.diskIdentical, pause: r.pause });
  rec.phases = spansFromTimeline(r.timeline, t0, r.timeline.at(-1)?.at ?? endAt);
  return endAt;
}

/**
 * libvirt's own way, as an operator runs it between two hosts: the destination disk pre-created
 * (libvirt 9.0 creates it only inside a storage pool), then one `virsh migrate`. Its streams are
 * libvirt's defaults here: plain TCP for memory and the NBD disk copy (no TLS), which favours it.
 */
async function migrateWithVirsh(lab: LibvirtLab, id: string, bytes: number, rec: RunRecord, t0: number): Promise<number> {
  await lab.hosts.execOn(B.name, 'qemu-img', ['create', '-q', '-f', 'raw', labDomainDiskPath(id, { vdev: 'vda', format: 'raw' }), String(bytes)]);
  const destUri = `qemu+unix:///system?socket=${join(lab.hosts.host(B.name).dir, 'run', 'libvirt-sock')}`;
  await lab.hosts.execOn(A.name, 'virsh', [
    'migrate', '--live', '--copy-storage-all', '--persistent', '--undefinesource', '--verbose',
    '--domain', id, '--desturi', destUri, '--migrateuri', `tcp://${B.dataAddress}`, '--listen-address', B.dataAddress,
  ]);
  const endAt = Date.now();
  rec.totalMs = endAt - t0;
  // libvirt keeps the completed job's statistics on the destination (`Total downtime`).
  const info = await lab.hosts.host(B.name).virsh.run(['domjobinfo', '--completed', '--domain', id]);
  const downtime = /Total downtime:\s+(\d+)/.exec(info);
  const memory = /Memory processed:\s+([\d.]+) (KiB|MiB|GiB)/.exec(info);
  rec.downtimeMs = downtime ? Number(downtime[1]) : NaN;
  rec.qemuDowntimeMs = rec.downtimeMs;
  if (memory) rec.memoryBytes = Math.round(Number(memory[1]) * { KiB: 1024, MiB: MiB, GiB: 1024 * MiB }[memory[2] as 'KiB' | 'MiB' | 'GiB']);
  rec.phases = [{ phase: 'virsh migrate', startMs: 0, endMs: rec.totalMs }];
  return endAt;
}
