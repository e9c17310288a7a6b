import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { openInventory, SCHEMA_VERSION, type Inventory } from '../../src/inventory/index.js';
import { MIGRATIONS } from '../../src/inventory/schema.js';
import { FerryError } from '../../src/shared/errors.js';
import { seedCluster, spec, tempDir } from './helpers.js';

function errorOf(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('expected a FerryError, nothing was thrown');
}

describe('inventory', () => {
  let tmp: ReturnType<typeof tempDir>;
  let path: string;
  let inv: Inventory;

  beforeEach(() => {
    tmp = tempDir();
    path = join(tmp.dir, 'sub', 'inventory.db');
    inv = seedCluster(path);
  });
  afterEach(() => {
    inv.close();
    tmp.cleanup();
  });

  it('creates a versioned schema in WAL mode and reopens it without re-migrating', () => {
    inv.close();
    const raw = new Database(path);
    expect(raw.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
    inv = openInventory(path);
    expect(inv.listNodes().map((n) => n.name)).toEqual(['node-a', 'node-b', 'node-x']);
  });

  it('refuses to open a database written by a newer Ferry', () => {
    inv.close();
    const raw = new Database(path);
    raw.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    raw.close();
    const e = errorOf(() => openInventory(path));
    expect(e.type).toBe('BadInput');
    expect(e.message).toMatch(/newer than this Ferry/);
    // reopen at the right version for afterEach
    const fix = new Database(path);
    fix.pragma(`user_version = ${SCHEMA_VERSION}`);
    fix.close();
    inv = openInventory(path);
  });

  it('upgrades a version-1 inventory in place: libvirt nodes allowed, instances and references kept', () => {
    inv.addInstance({ spec: spec('i-1'), host: 'node-b' });
    inv.close();
    // Put the nodes table back as version 1 wrote it (CHECK without libvirt).
    const raw = new Database(path);
    raw.pragma('foreign_keys = OFF');
    const v1 = MIGRATIONS[0]!.statements[0]!.replace('CREATE TABLE nodes', 'CREATE TABLE nodes_v1');
    expect(v1).toContain("IN ('qemu', 'xen')");
    raw.exec(v1);
    raw.exec('INSERT INTO nodes_v1 SELECT * FROM nodes; DROP TABLE nodes; ALTER TABLE nodes_v1 RENAME TO nodes');
    raw.pragma('user_version = 1');
    expect(() => raw.prepare("UPDATE nodes SET hypervisor = 'libvirt' WHERE name = 'node-x'").run()).toThrow(/CHECK/);
    raw.close();

    inv = openInventory(path);
    const after = new Database(path, { readonly: true });
    expect(after.pragma('user_version', { simple: true })).toBe(SCHEMA_VERSION);
    expect(after.pragma('foreign_key_check')).toEqual([]);
    after.close();
    expect(inv.getInstance('i-1').host).toBe('node-b');
    expect(inv.listNodes().map((n) => n.name)).toEqual(['node-a', 'node-b', 'node-x']);
    inv.addNode({ name: 'node-l', hypervisor: 'libvirt', controlAddress: '10.0.0.9', dataAddress: '10.0.1.9', capacity: { vcpus: 4, memoryMiB: 4096, diskBytes: 1 << 30 } });
    expect(inv.getNode('node-l').hypervisor).toBe('libvirt');
    // References still bite: an instance on an unknown node is refused.
    expect(() => inv.addInstance({ spec: spec('i-2'), host: 'node-q' })).toThrow();
  });

  it('stores nodes and instances and computes free capacity', () => {
    inv.addInstance({ spec: spec('i-1', { vcpus: 2, memoryMiB: 512 }), host: 'node-b' });
    expect(inv.getInstance('i-1')).toMatchObject({ host: 'node-b', state: 'running', memoryMiB: 512 });
    expect(inv.getInstance('i-1').spec.disks[0].path).toBe('/var/lib/ferry/disks/i-1.raw');
    expect(inv.freeCapacity('node-b')).toEqual({ vcpus: 2, memoryMiB: 512, diskBytes: (1 << 30) - (64 << 20) });
    expect(inv.listInstances({ host: 'node-b' }).map((i) => i.id)).toEqual(['i-1']);
    expect(inv.setNodeState('node-b', 'drain').state).toBe('drain');
    expect(errorOf(() => inv.getNode('node-z')).type).toBe('UnknownNode');
    expect(errorOf(() => inv.getInstance('i-404')).type).toBe('UnknownInstance');
    // placing too much on a node is refused and names the short resource
    const full = errorOf(() => inv.addInstance({ spec: spec('i-2', { memoryMiB: 600 }), host: 'node-b' }));
    expect(full.type).toBe('DestinationFull');
    expect(full.message).toMatch(/memoryMiB/);
    expect(full.message).not.toMatch(/vcpus/);
    expect(inv.findInstance('i-2')).toBeUndefined();
    expect(errorOf(() => inv.addInstance({ spec: spec('i-3'), host: 'node-x' })).type).toBe('HypervisorMismatch');
  });

  it('refuses hostile ids with BadInput and writes nothing', () => {
    const hostile = ['../etc/passwd', "i-1'; DROP TABLE nodes; --", 'I-UPPER', '', '-lead', 'a'.repeat(64), 'i 1', 'i-1\0x'];
    for (const id of hostile) {
      expect(errorOf(() => inv.addInstance({ spec: spec(id), host: 'node-a' })).type).toBe('BadInput');
      expect(errorOf(() => inv.getInstance(id)).type).toBe('BadInput');
      expect(errorOf(() => inv.addNode({ name: id, hypervisor: 'qemu', controlAddress: 'x', dataAddress: 'y', capacity: { vcpus: 1, memoryMiB: 1, diskBytes: 1 } })).type).toBe('BadInput');
    }
    expect(errorOf(() => inv.reserve({ migrationId: 'm/../1', instanceId: 'i-1', node: 'node-b', vcpus: 1, memoryMiB: 1, diskBytes: 1 })).type).toBe('BadInput');
    expect(errorOf(() => inv.reserve({ migrationId: 'm-1', instanceId: 'i-1', node: 'node-b', vcpus: -1, memoryMiB: 1, diskBytes: 1 })).type).toBe('BadInput');
    expect(errorOf(() => inv.logPhase('m-1', 'teleport' as never)).type).toBe('BadInput');
    const msg = errorOf(() => inv.addNode({ name: 'node-q', hypervisor: 'kvm' as never, controlAddress: 'x', dataAddress: 'y', capacity: { vcpus: 1, memoryMiB: 1, diskBytes: 1 } })).message;
    expect(msg).toMatch(/hypervisor/);
    expect(inv.listNodes()).toHaveLength(3);
    expect(inv.listInstances()).toHaveLength(0);
    expect(inv.listMigrations()).toHaveLength(0);
  });

  it('reserves idempotently and refuses what does not fit, naming the resource', () => {
    inv.addInstance({ spec: spec('i-1', { vcpus: 2, memoryMiB: 768 }), host: 'node-a' });
    inv.addInstance({ spec: spec('i-2', { vcpus: 1, memoryMiB: 512 }), host: 'node-a' });
    const r1 = inv.reserve({ migrationId: 'm-1', instanceId: 'i-1', node: 'node-b', vcpus: 2, memoryMiB: 768, diskBytes: 64 << 20 });
    const again = inv.reserve({ migrationId: 'm-1', instanceId: 'i-1', node: 'node-b', vcpus: 2, memoryMiB: 768, diskBytes: 64 << 20 });
    expect(again).toEqual(r1);
    expect(inv.listReservations({ live: true })).toHaveLength(1);
    expect(inv.getInstance('i-1').state).toBe('migrating');
    const e = errorOf(() => inv.reserve({ migrationId: 'm-2', instanceId: 'i-2', node: 'node-b', vcpus: 1, memoryMiB: 512, diskBytes: 64 << 20 }));
    expect(e.type).toBe('DestinationFull');
    expect(e.message).toContain('node-b');
    expect(e.message).toContain('memoryMiB: needs 512 MiB memory, free 256 MiB memory');
    expect(inv.getReservation('m-2')).toBeUndefined();
    expect(errorOf(() => inv.reserve({ migrationId: 'm-3', instanceId: 'i-2', node: 'node-a', vcpus: 1, memoryMiB: 1, diskBytes: 1 })).type).toBe('InvalidDestination');
    expect(errorOf(() => inv.reserve({ migrationId: 'm-4', instanceId: 'i-2', node: 'node-x', vcpus: 1, memoryMiB: 1, diskBytes: 1 })).type).toBe('HypervisorMismatch');
    inv.setNodeState('node-b', 'down');
    expect(errorOf(() => inv.reserve({ migrationId: 'm-5', instanceId: 'i-2', node: 'node-b', vcpus: 0, memoryMiB: 0, diskBytes: 0 })).type).toBe('InvalidDestination');
    expect(inv.checkConsistency()).toEqual([]);
  });

  it('release after a rollback leaves every count as before', () => {
    inv.addInstance({ spec: spec('i-1', { vcpus: 2, memoryMiB: 256 }), host: 'node-a' });
    const snapshot = () => ({
      nodes: inv.listNodes().map((n) => ({ n: n.name, free: inv.freeCapacity(n.name) })),
      instances: inv.listInstances(),
      live: inv.listReservations({ live: true }),
    });
    const before = snapshot();
    inv.logPhase('m-1', 'validate');
    inv.reserve({ migrationId: 'm-1', instanceId: 'i-1', node: 'node-b', vcpus: 2, memoryMiB: 256, diskBytes: 64 << 20 });
    expect(inv.freeCapacity('node-b').memoryMiB).toBe(1024 - 256);
    inv.logPhase('m-1', 'rolling-back', { reason: 'cancelled' });
    expect(inv.release('m-1')).toEqual({ changed: true });
    expect(inv.release('m-1')).toEqual({ changed: false });
    expect(inv.release('never-reserved')).toEqual({ changed: false });
    inv.logPhase('m-1', 'rolled-back');
    inv.finishMigration('m-1', 'rolled-back', { reason: 'cancelled' });
    expect(snapshot()).toEqual(before);
    const log = inv.getMigration('m-1')!;
    expect(log).toMatchObject({ instanceId: 'i-1', source: 'node-a', destination: 'node-b', outcome: 'rolled-back', committedAt: null });
    expect(log.events.map((e) => e.phase)).toEqual(['validate', 'rolling-back', 'rolled-back']);
    expect(inv.checkConsistency()).toEqual([]);
  });

  it('commits a migration in one idempotent transaction', () => {
    inv.addInstance({ spec: spec('i-1', { vcpus: 2, memoryMiB: 256 }), host: 'node-a' });
    const freeA = inv.freeCapacity('node-a');
    inv.reserve({ migrationId: 'm-1', instanceId: 'i-1', node: 'node-b', vcpus: 2, memoryMiB: 256, diskBytes: 64 << 20 });
    // The destination keeps the disk elsewhere: the spec follows it.
    const moved = [{ vdev: 'vda', kind: 'file' as const, path: '/srv/ferry/disks/i-1.raw', format: 'raw' as const, bytes: 64 << 20 }];
    const first = inv.commitMigration({ migrationId: 'm-1', instanceId: 'i-1', source: 'node-a', destination: 'node-b', disks: moved });
    expect(first.changed).toBe(true);
    expect(first.instance).toMatchObject({ host: 'node-b', state: 'running' });
    expect(first.instance.spec.disks).toEqual(moved);
    expect(inv.getInstance('i-1').spec.disks).toEqual(moved);
    const state = () => ({
      instances: inv.listInstances(),
      reservations: inv.listReservations(),
      free: ['node-a', 'node-b'].map((n) => inv.freeCapacity(n)),
      migration: inv.getMigration('m-1'),
    });
    const afterFirst = state();
    const second = inv.commitMigration({ migrationId: 'm-1', instanceId: 'i-1', source: 'node-a', destination: 'node-b', disks: moved });
    expect(second.changed).toBe(false);
    expect(state()).toEqual(afterFirst);
    // capacity moved: the source got its share back, the destination holds it once (not twice)
    expect(inv.freeCapacity('node-a')).toEqual({ vcpus: freeA.vcpus + 2, memoryMiB: freeA.memoryMiB + 256, diskBytes: freeA.diskBytes + (64 << 20) });
    expect(inv.freeCapacity('node-b')).toEqual({ vcpus: 2, memoryMiB: 768, diskBytes: (1 << 30) - (64 << 20) });
    expect(inv.getReservation('m-1')!.releasedAt).not.toBeNull();
    expect(afterFirst.migration!.events.filter((e) => e.phase === 'commit')).toHaveLength(1);
    // a committed migration cannot be recorded as rolled back
    expect(errorOf(() => inv.finishMigration('m-1', 'rolled-back')).type).toBe('BadInput');
    expect(inv.finishMigration('m-1', 'succeeded', { downtimeMs: 12 }).summary).toEqual({ downtimeMs: 12 });
    expect(inv.finishMigration('m-1', 'succeeded', { downtimeMs: 99 }).summary).toEqual({ downtimeMs: 12 });
    expect(inv.listMigrations({ instanceId: 'i-1' }).map((m) => m.migrationId)).toEqual(['m-1']);
    expect(inv.checkConsistency()).toEqual([]);
  });

  it('consistency check catches what raw SQL forced in', () => {
    inv.addInstance({ spec: spec('i-1', { vcpus: 4, memoryMiB: 1000 }), host: 'node-b' });
    expect(inv.checkConsistency()).toEqual([]);
    inv.close();
    const raw = new Database(path);
    raw.pragma('foreign_keys = OFF');
    const t = new Date().toISOString();
    raw.prepare(`INSERT INTO instances (id, host, vcpus, memory_mib, disk_bytes, spec, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)`)
      .run('i-2', 'node-b', 1, 512, 1024, JSON.stringify(spec('i-2', { memoryMiB: 512 })), t, t);
    raw.prepare(`INSERT INTO instances (id, host, vcpus, memory_mib, disk_bytes, spec, state, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)`)
      .run('i-3', 'node-gone', 1, 1, 1, JSON.stringify(spec('i-3')), t, t);
    raw.prepare(`INSERT INTO migrations (migration_id, instance_id, source, destination, started_at, committed_at) VALUES ('m-9', 'i-3', 'node-a', 'node-a', ?, ?)`).run(t, t);
    raw.prepare(`INSERT INTO reservations (migration_id, instance_id, node, vcpus, memory_mib, disk_bytes, created_at) VALUES ('m-9', 'i-3', 'node-a', 1, 1, 1, ?)`).run(t);
    raw.close();
    inv = openInventory(path);
    const kinds = inv.checkConsistency().map((v) => `${v.kind}:${v.subject}`).sort();
    expect(kinds).toEqual([
      'instance-on-unknown-node:i-3',
      'over-capacity:node-b',
      'over-capacity:node-b',
      'reservation-live-after-commit:m-9',
    ]);
    expect(inv.checkConsistency().find((v) => v.kind === 'over-capacity')!.message).toMatch(/node-b/);
  });

  it('syncs what a node runs: adds once, updates what changed, reports what it must not touch', () => {
    const first = inv.syncInstances('node-a', [spec('i-1'), spec('i-2', { vcpus: 2 })]);
    expect(first).toMatchObject({ node: 'node-a', added: ['i-1', 'i-2'], updated: [], unchanged: [], conflicts: [], missing: [], overCapacity: false });
    expect(inv.listInstances({ host: 'node-a' }).map((i) => [i.id, i.state, i.vcpus])).toEqual([['i-1', 'running', 1], ['i-2', 'running', 2]]);

    // The same host, asked again: nothing new, nothing doubled.
    const again = inv.syncInstances('node-a', [spec('i-1'), spec('i-2', { vcpus: 2 })]);
    expect(again).toMatchObject({ added: [], updated: [], unchanged: ['i-1', 'i-2'], conflicts: [], missing: [] });
    expect(inv.listInstances()).toHaveLength(2);

    // The operator gave i-1 more memory: the record and the capacity it takes follow.
    const freeBefore = inv.freeCapacity('node-a');
    const changed = inv.syncInstances('node-a', [spec('i-1', { memoryMiB: 512 }), spec('i-2', { vcpus: 2 })]);
    expect(changed).toMatchObject({ added: [], updated: ['i-1'], unchanged: ['i-2'] });
    expect(inv.getInstance('i-1')).toMatchObject({ memoryMiB: 512, spec: { memoryMiB: 512 } });
    expect(inv.freeCapacity('node-a').memoryMiB).toBe(freeBefore.memoryMiB - (512 - 128));
    expect(inv.listInstances()).toHaveLength(2);

    // What the file holds, read by a fresh connection.
    inv.close();
    inv = openInventory(path);
    expect(inv.listInstances().map((i) => [i.id, i.host, i.memoryMiB])).toEqual([['i-1', 'node-a', 512], ['i-2', 'node-a', 128]]);
    expect(inv.checkConsistency()).toEqual([]);
  });

  it('sync leaves alone a guest placed on another node, one it did not find, and one of the wrong hypervisor', () => {
    inv.addInstance({ spec: spec('i-b', { memoryMiB: 256 }), host: 'node-b' });
    inv.syncInstances('node-a', [spec('i-1'), spec('i-2')]);

    // node-a says it runs i-b (with other memory), no longer runs i-2, and a xen guest.
    const r = inv.syncInstances('node-a', [spec('i-1'), spec('i-b', { memoryMiB: 64 }), spec('i-x', { hypervisor: 'xen' })]);
    expect(r.added).toEqual([]);
    expect(r.updated).toEqual([]);
    expect(r.unchanged).toEqual(['i-1']);
    expect(r.conflicts.map((c) => c.id).sort()).toEqual(['i-b', 'i-x']);
    expect(r.conflicts.find((c) => c.id === 'i-b')!.reason).toMatch(/node-b/);
    expect(r.conflicts.find((c) => c.id === 'i-x')!.reason).toMatch(/xen/);
    expect(r.missing).toEqual(['i-2']);

    // Not moved, not changed; the missing one kept; the xen guest not recorded.
    expect(inv.getInstance('i-b')).toMatchObject({ host: 'node-b', memoryMiB: 256, spec: { memoryMiB: 256 } });
    expect(inv.getInstance('i-2')).toMatchObject({ host: 'node-a', state: 'running' });
    expect(inv.findInstance('i-x')).toBeUndefined();
    expect(inv.listInstances().map((i) => i.id).sort()).toEqual(['i-1', 'i-2', 'i-b']);
    expect(inv.checkConsistency()).toEqual([]);
  });
});
