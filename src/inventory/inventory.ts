// The inventory: nodes, instances, capacity reservations and the migration log, in SQLite.
// Every method is one transaction; the ones that check-then-write (reserve, addInstance, commit)
// take the write lock up front (BEGIN IMMEDIATE) so two processes cannot both pass the check.
// Queries stay in plain SQL that PostgreSQL also runs, so a second backend can implement
// `InventoryRepository` with the same statements (placeholders aside).
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { totalDiskBytes, type InstanceSpec } from '../shared/instance.js';
import type { Phase } from '../shared/names.js';
import type { SyncReport } from '../shared/messages.js';
import { FerryError, ErrorTypes } from '../shared/errors.js';
import { migrate } from './schema.js';
import type {
  ConsistencyViolation,
  InstanceRecord,
  InstanceState,
  MigrationEvent,
  MigrationOutcome,
  MigrationRecord,
  NodeRecord,
  NodeState,
  ReservationRecord,
  Resources,
} from './types.js';
import {
  beginInputSchema,
  commitInputSchema,
  idSchema,
  instanceInputSchema,
  instanceSpecSchema,
  instanceStateSchema,
  migrationIdSchema,
  nodeInputSchema,
  nodeStateSchema,
  outcomeSchema,
  parseInput,
  phaseSchema,
  reserveInputSchema,
  type BeginInput,
  type CommitInput,
  type NodeInput,
  type ReserveInput,
} from './validation.js';

export interface AddInstanceInput {
  spec: InstanceSpec;
  host: string;
  state?: InstanceState;
}

export type { SyncReport };

export interface CommitResult {
  /** false when the migration was already committed: the second run changed nothing. */
  changed: boolean;
  instance: InstanceRecord;
}

/** All inventory access goes through this interface; SQLite implements it today. */
export interface InventoryRepository {
  close(): void;
  addNode(input: NodeInput): NodeRecord;
  getNode(name: string): NodeRecord;
  findNode(name: string): NodeRecord | undefined;
  listNodes(): NodeRecord[];
  setNodeState(name: string, state: NodeState): NodeRecord;
  addInstance(input: AddInstanceInput): InstanceRecord;
  getInstance(id: string): InstanceRecord;
  findInstance(id: string): InstanceRecord | undefined;
  syncInstances(node: string, found: InstanceSpec[]): SyncReport;
  listInstances(filter?: { host?: string }): InstanceRecord[];
  setInstanceState(id: string, state: InstanceState): InstanceRecord;
  removeInstance(id: string): { changed: boolean };
  freeCapacity(node: string): Resources;
  reserve(input: ReserveInput): ReservationRecord;
  getReservation(migrationId: string): ReservationRecord | undefined;
  listReservations(filter?: { live?: boolean; node?: string }): ReservationRecord[];
  release(migrationId: string): { changed: boolean };
  beginMigration(input: BeginInput): MigrationRecord;
  commitMigration(input: CommitInput): CommitResult;
  logPhase(migrationId: string, phase: Phase, detail?: unknown): MigrationEvent;
  finishMigration(migrationId: string, outcome: MigrationOutcome, summary?: unknown): MigrationRecord;
  getMigration(migrationId: string): MigrationRecord | undefined;
  listMigrations(filter?: { instanceId?: string; limit?: number }): MigrationRecord[];
  checkConsistency(): ConsistencyViolation[];
}

export interface OpenOptions {
  /** How long a writer waits for another process's lock before failing (ms). */
  busyTimeoutMs?: number;
  readonly?: boolean;
}

/** Opens (creating if needed) the inventory at `path` and brings its schema up to date. */
export function openInventory(path: string, opts: OpenOptions = {}): Inventory {
  if (typeof path !== 'string' || path.length === 0 || path.includes('\0')) {
    throw new FerryError(ErrorTypes.BadInput, `inventory path must be a non-empty file path`);
  }
  if (path !== ':memory:' && !opts.readonly) mkdirSync(dirname(path), { recursive: true });
  const db = new Database(path, { readonly: opts.readonly ?? false, fileMustExist: opts.readonly ?? false });
  try {
    // busy_timeout first: switching to WAL needs the lock another process may hold.
    db.pragma(`busy_timeout = ${Math.max(0, Math.trunc(opts.busyTimeoutMs ?? 10_000))}`);
    if (!opts.readonly) {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
    }
    db.pragma('foreign_keys = ON');
    if (!opts.readonly) migrate(db);
  } catch (err) {
    db.close();
    throw err;
  }
  return new Inventory(db);
}

interface NodeRow {
  name: string;
  hypervisor: 'qemu' | 'xen';
  control_address: string;
  data_address: string;
  state: NodeState;
  vcpus: number;
  memory_mib: number;
  disk_bytes: number;
  extra: string;
}
interface InstanceRow {
  id: string;
  host: string;
  state: InstanceState;
  vcpus: number;
  memory_mib: number;
  disk_bytes: number;
  spec: string;
}
interface ReservationRow {
  migration_id: string;
  instance_id: string;
  node: string;
  vcpus: number;
  memory_mib: number;
  disk_bytes: number;
  created_at: string;
  released_at: string | null;
}
interface MigrationRow {
  migration_id: string;
  instance_id: string | null;
  source: string | null;
  destination: string | null;
  started_at: string;
  committed_at: string | null;
  finished_at: string | null;
  outcome: MigrationOutcome | null;
  summary: string | null;
}
interface EventRow {
  seq: number;
  phase: Phase;
  detail: string | null;
  at: string;
}
interface UsageRow {
  vcpus: number;
  memory_mib: number;
  disk_bytes: number;
}

const now = (): string => new Date().toISOString();
const toJson = (v: unknown): string | null => (v === undefined ? null : JSON.stringify(v));
const fromJson = (s: string | null): unknown => (s === null ? null : JSON.parse(s));

function nodeFromRow(r: NodeRow): NodeRecord {
  return {
    name: r.name,
    hypervisor: r.hypervisor,
    controlAddress: r.control_address,
    dataAddress: r.data_address,
    state: r.state,
    capacity: { vcpus: r.vcpus, memoryMiB: r.memory_mib, diskBytes: r.disk_bytes },
    extra: JSON.parse(r.extra) as Record<string, unknown>,
  };
}
function instanceFromRow(r: InstanceRow): InstanceRecord {
  return {
    id: r.id,
    host: r.host,
    state: r.state,
    vcpus: r.vcpus,
    memoryMiB: r.memory_mib,
    diskBytes: r.disk_bytes,
    spec: JSON.parse(r.spec) as InstanceSpec,
  };
}
function reservationFromRow(r: ReservationRow): ReservationRecord {
  return {
    migrationId: r.migration_id,
    instanceId: r.instance_id,
    node: r.node,
    vcpus: r.vcpus,
    memoryMiB: r.memory_mib,
    diskBytes: r.disk_bytes,
    createdAt: r.created_at,
    releasedAt: r.released_at,
  };
}

function resourcesOf(spec: InstanceSpec): Resources {
  return { vcpus: spec.vcpus, memoryMiB: spec.memoryMiB, diskBytes: totalDiskBytes(spec) };
}

function fmtResource(key: keyof Resources, n: number): string {
  if (key === 'vcpus') return `${n} vCPU`;
  if (key === 'memoryMiB') return `${n} MiB memory`;
  return `${n} bytes disk`;
}

export class Inventory implements InventoryRepository {
  constructor(private readonly db: Database.Database) {}

  close(): void {
    if (this.db.open) this.db.close();
  }

  // ---------------------------------------------------------------- nodes

  /** Adds a node. Adding an identical node again is a no-op; a different one is refused. */
  addNode(input: NodeInput): NodeRecord {
    const n = parseInput(nodeInputSchema, input, 'node');
    return this.db
      .transaction((): NodeRecord => {
        const existing = this.findNode(n.name);
        if (existing) {
          const same =
            JSON.stringify({ ...existing, state: undefined }) === JSON.stringify({ ...n, state: undefined });
          if (same) return existing;
          throw new FerryError(ErrorTypes.BadInput, `node ${n.name} already exists with other settings`);
        }
        const t = now();
        this.db
          .prepare(
            `INSERT INTO nodes (name, hypervisor, control_address, data_address, state, vcpus, memory_mib,
               disk_bytes, extra, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(
            n.name, n.hypervisor, n.controlAddress, n.dataAddress, n.state, n.capacity.vcpus,
            n.capacity.memoryMiB, n.capacity.diskBytes, JSON.stringify(n.extra), t, t,
          );
        return this.getNode(n.name);
      })
      .immediate();
  }

  findNode(name: string): NodeRecord | undefined {
    const id = parseInput(idSchema, name, 'node name');
    const row = this.db.prepare(`SELECT * FROM nodes WHERE name = ?`).get(id) as NodeRow | undefined;
    return row ? nodeFromRow(row) : undefined;
  }

  /** Throws UnknownNode if there is no such node. */
  getNode(name: string): NodeRecord {
    const n = this.findNode(name);
    if (!n) throw new FerryError(ErrorTypes.UnknownNode, `no node named ${name} in the inventory`);
    return n;
  }

  listNodes(): NodeRecord[] {
    return (this.db.prepare(`SELECT * FROM nodes ORDER BY name`).all() as NodeRow[]).map(nodeFromRow);
  }

  setNodeState(name: string, state: NodeState): NodeRecord {
    const id = parseInput(idSchema, name, 'node name');
    const s = parseInput(nodeStateSchema, state, 'node state');
    const r = this.db.prepare(`UPDATE nodes SET state = ?, updated_at = ? WHERE name = ?`).run(s, now(), id);
    if (r.changes === 0) throw new FerryError(ErrorTypes.UnknownNode, `no node named ${id} in the inventory`);
    return this.getNode(id);
  }

  // ------------------------------------------------------------ instances

  /**
   * Places an instance on `host`. Refused if the host lacks room (DestinationFull) or runs another
   * hypervisor. Adding the identical instance again is a no-op.
   */
  addInstance(input: AddInstanceInput): InstanceRecord {
    const { spec, host, state } = parseInput(instanceInputSchema, input, 'instance');
    return this.db
      .transaction((): InstanceRecord => {
        const existing = this.findInstance(spec.id);
        if (existing) {
          if (existing.host === host && JSON.stringify(existing.spec) === JSON.stringify(spec)) return existing;
          throw new FerryError(ErrorTypes.BadInput, `instance ${spec.id} already exists (on ${existing.host})`);
        }
        const node = this.getNode(host);
        if (node.hypervisor !== spec.hypervisor) {
          throw new FerryError(
            ErrorTypes.HypervisorMismatch,
            `instance ${spec.id} is a ${spec.hypervisor} guest but node ${host} runs ${node.hypervisor}`,
          );
        }
        this.assertRoom(host, resourcesOf(spec), `instance ${spec.id}`);
        const t = now();
        this.db
          .prepare(
            `INSERT INTO instances (id, host, vcpus, memory_mib, disk_bytes, spec, state, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(spec.id, host, spec.vcpus, spec.memoryMiB, totalDiskBytes(spec), JSON.stringify(spec), state, t, t);
        return this.getInstance(spec.id);
      })
      .immediate();
  }

  /**
   * Records what `node` says it runs, in one transaction: new guests are added, known ones on this
   * node updated to what the host says now (never duplicated), and nothing else changes. A guest
   * the inventory places elsewhere, or one being migrated, is reported, not touched. What the host
   * runs is a fact: a node whose recorded capacity is too small is reported, not refused.
   */
  syncInstances(node: string, found: InstanceSpec[]): SyncReport {
    const host = parseInput(idSchema, node, 'node');
    // One odd guest is reported, not a reason to record none of the others.
    const invalid: SyncReport['conflicts'] = [];
    const specs: InstanceSpec[] = [];
    for (const f of found) {
      const r = instanceSpecSchema.safeParse(f);
      if (r.success) specs.push(r.data as InstanceSpec);
      else invalid.push({ id: String((f as { id?: unknown }).id), reason: `not a valid description: ${r.error.issues.map((i) => `${i.path.join('.') || 'spec'}: ${i.message}`).join('; ')}` });
    }
    return this.db
      .transaction((): SyncReport => {
        const n = this.getNode(host);
        const report: SyncReport = { node: host, added: [], updated: [], unchanged: [], conflicts: [...invalid], missing: [], overCapacity: false };
        const t = now();
        for (const spec of specs) {
          if (spec.hypervisor !== n.hypervisor) {
            report.conflicts.push({ id: spec.id, reason: `a ${spec.hypervisor} guest on a ${n.hypervisor} node` });
            continue;
          }
          const existing = this.findInstance(spec.id);
          const json = JSON.stringify(spec);
          if (!existing) {
            this.db
              .prepare(
                `INSERT INTO instances (id, host, vcpus, memory_mib, disk_bytes, spec, state, created_at, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)`,
              )
              .run(spec.id, host, spec.vcpus, spec.memoryMiB, totalDiskBytes(spec), json, t, t);
            report.added.push(spec.id);
          } else if (existing.host !== host) {
            report.conflicts.push({ id: spec.id, reason: `the inventory places ${spec.id} on ${existing.host}: sync that node, or remove the instance there first` });
          } else if (existing.state === 'migrating' || this.liveReservationOf(spec.id)) {
            report.conflicts.push({ id: spec.id, reason: `${spec.id} is being migrated: sync again when it is done` });
          } else if (JSON.stringify(existing.spec) === json && existing.state === 'running') {
            report.unchanged.push(spec.id);
          } else {
            this.db
              .prepare(`UPDATE instances SET vcpus = ?, memory_mib = ?, disk_bytes = ?, spec = ?, state = 'running', updated_at = ? WHERE id = ?`)
              .run(spec.vcpus, spec.memoryMiB, totalDiskBytes(spec), json, t, spec.id);
            report.updated.push(spec.id);
          }
        }
        const seen = new Set(specs.map((x) => x.id));
        report.missing = this.listInstances({ host }).filter((i) => !seen.has(i.id)).map((i) => i.id);
        const free = this.freeCapacity(host);
        report.overCapacity = free.vcpus < 0 || free.memoryMiB < 0 || free.diskBytes < 0;
        return report;
      })
      .immediate();
  }

  private liveReservationOf(instanceId: string): string | undefined {
    const r = this.db.prepare(`SELECT migration_id FROM reservations WHERE instance_id = ? AND released_at IS NULL`).get(instanceId) as
      | { migration_id: string }
      | undefined;
    return r?.migration_id;
  }

  findInstance(id: string): InstanceRecord | undefined {
    const i = parseInput(idSchema, id, 'instance id');
    const row = this.db.prepare(`SELECT * FROM instances WHERE id = ?`).get(i) as InstanceRow | undefined;
    return row ? instanceFromRow(row) : undefined;
  }

  /** Throws UnknownInstance if there is no such instance. */
  getInstance(id: string): InstanceRecord {
    const i = this.findInstance(id);
    if (!i) throw new FerryError(ErrorTypes.UnknownInstance, `no instance ${id} in the inventory`);
    return i;
  }

  listInstances(filter: { host?: string } = {}): InstanceRecord[] {
    if (filter.host !== undefined) {
      const host = parseInput(idSchema, filter.host, 'host');
      return (this.db.prepare(`SELECT * FROM instances WHERE host = ? ORDER BY id`).all(host) as InstanceRow[]).map(
        instanceFromRow,
      );
    }
    return (this.db.prepare(`SELECT * FROM instances ORDER BY id`).all() as InstanceRow[]).map(instanceFromRow);
  }

  /** Forgets an instance (it was deleted on its host). Refused while a migration holds it. */
  removeInstance(id: string): { changed: boolean } {
    const instanceId = parseInput(idSchema, id, 'instance id');
    return this.db
      .transaction(() => {
        const live = this.db
          .prepare(`SELECT migration_id FROM reservations WHERE instance_id = ? AND released_at IS NULL`)
          .get(instanceId) as { migration_id: string } | undefined;
        if (live) {
          throw new FerryError(ErrorTypes.BadInput, `instance ${instanceId} is being migrated (${live.migration_id}): cancel that first`);
        }
        // Released reservations are spent; the migration log keeps the history.
        this.db.prepare(`DELETE FROM reservations WHERE instance_id = ?`).run(instanceId);
        const r = this.db.prepare(`DELETE FROM instances WHERE id = ?`).run(instanceId);
        return { changed: r.changes > 0 };
      })
      .immediate();
  }

  setInstanceState(id: string, state: InstanceState): InstanceRecord {
    const i = parseInput(idSchema, id, 'instance id');
    const s = parseInput(instanceStateSchema, state, 'instance state');
    const r = this.db.prepare(`UPDATE instances SET state = ?, updated_at = ? WHERE id = ?`).run(s, now(), i);
    if (r.changes === 0) throw new FerryError(ErrorTypes.UnknownInstance, `no instance ${i} in the inventory`);
    return this.getInstance(i);
  }

  // ------------------------------------------------------------- capacity

  private used(node: string): Resources {
    const inst = this.db
      .prepare(
        `SELECT COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS memory_mib,
           COALESCE(SUM(disk_bytes), 0) AS disk_bytes FROM instances WHERE host = ?`,
      )
      .get(node) as UsageRow;
    const res = this.db
      .prepare(
        `SELECT COALESCE(SUM(vcpus), 0) AS vcpus, COALESCE(SUM(memory_mib), 0) AS memory_mib,
           COALESCE(SUM(disk_bytes), 0) AS disk_bytes FROM reservations WHERE node = ? AND released_at IS NULL`,
      )
      .get(node) as UsageRow;
    return {
      vcpus: inst.vcpus + res.vcpus,
      memoryMiB: inst.memory_mib + res.memory_mib,
      diskBytes: inst.disk_bytes + res.disk_bytes,
    };
  }

  /** Capacity minus hosted instances minus live reservations (negative if overcommitted). */
  freeCapacity(node: string): Resources {
    const n = this.getNode(node);
    const u = this.used(n.name);
    return {
      vcpus: n.capacity.vcpus - u.vcpus,
      memoryMiB: n.capacity.memoryMiB - u.memoryMiB,
      diskBytes: n.capacity.diskBytes - u.diskBytes,
    };
  }

  /** Must run inside a write transaction. Throws DestinationFull naming every short resource. */
  private assertRoom(node: string, need: Resources, what: string): void {
    const free = this.freeCapacity(node);
    const short = (['vcpus', 'memoryMiB', 'diskBytes'] as const).filter((k) => need[k] > free[k]);
    if (short.length === 0) return;
    const parts = short.map((k) => `${k}: needs ${fmtResource(k, need[k])}, free ${fmtResource(k, Math.max(0, free[k]))}`);
    throw new FerryError(
      ErrorTypes.DestinationFull,
      `node ${node} has not enough room for ${what}: ${parts.join('; ')}`,
      { node, short, need, free },
    );
  }

  // --------------------------------------------------------- reservations

  /**
   * Holds capacity on `node` for a migration. Idempotent by migrationId: a second call returns
   * the first reservation (even if since released). The check and the insert share one
   * IMMEDIATE transaction, so concurrent reservations cannot overcommit a node.
   */
  reserve(input: ReserveInput): ReservationRecord {
    const r = parseInput(reserveInputSchema, input, 'reservation');
    return this.db
      .transaction((): ReservationRecord => {
        const existing = this.getReservation(r.migrationId);
        if (existing) {
          if (existing.instanceId !== r.instanceId || existing.node !== r.node) {
            throw new FerryError(
              ErrorTypes.BadInput,
              `migration ${r.migrationId} already reserved ${existing.node} for instance ${existing.instanceId}`,
            );
          }
          return existing;
        }
        const instance = this.getInstance(r.instanceId);
        const node = this.getNode(r.node);
        if (node.state !== 'up') {
          throw new FerryError(ErrorTypes.InvalidDestination, `node ${node.name} is ${node.state}, not up`);
        }
        if (instance.host === node.name) {
          throw new FerryError(ErrorTypes.InvalidDestination, `instance ${instance.id} already runs on ${node.name}`);
        }
        if (node.hypervisor !== instance.spec.hypervisor) {
          throw new FerryError(
            ErrorTypes.HypervisorMismatch,
            `instance ${instance.id} is a ${instance.spec.hypervisor} guest but node ${node.name} runs ${node.hypervisor}`,
          );
        }
        const other = this.db
          .prepare(`SELECT migration_id FROM reservations WHERE instance_id = ? AND released_at IS NULL`)
          .get(instance.id) as { migration_id: string } | undefined;
        if (other) {
          throw new FerryError(
            ErrorTypes.BadInput,
            `instance ${instance.id} already has a live reservation for migration ${other.migration_id}; release it first`,
          );
        }
        this.assertRoom(node.name, r, `instance ${instance.id}`);
        const t = now();
        this.db
          .prepare(
            `INSERT INTO reservations (migration_id, instance_id, node, vcpus, memory_mib, disk_bytes, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(r.migrationId, instance.id, node.name, r.vcpus, r.memoryMiB, r.diskBytes, t);
        this.upsertMigration(r.migrationId, { instanceId: instance.id, source: instance.host, destination: node.name });
        if (instance.state === 'running') {
          this.db.prepare(`UPDATE instances SET state = 'migrating', updated_at = ? WHERE id = ?`).run(t, instance.id);
        }
        return this.getReservation(r.migrationId)!;
      })
      .immediate();
  }

  getReservation(migrationId: string): ReservationRecord | undefined {
    const m = parseInput(migrationIdSchema, migrationId, 'migration id');
    const row = this.db.prepare(`SELECT * FROM reservations WHERE migration_id = ?`).get(m) as ReservationRow | undefined;
    return row ? reservationFromRow(row) : undefined;
  }

  listReservations(filter: { live?: boolean; node?: string } = {}): ReservationRecord[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (filter.live === true) where.push('released_at IS NULL');
    if (filter.live === false) where.push('released_at IS NOT NULL');
    if (filter.node !== undefined) {
      where.push('node = ?');
      args.push(parseInput(idSchema, filter.node, 'node name'));
    }
    const sql = `SELECT * FROM reservations ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at, migration_id`;
    return (this.db.prepare(sql).all(...args) as ReservationRow[]).map(reservationFromRow);
  }

  /**
   * Gives the reserved capacity back (rollback). Idempotent; a missing reservation is not an
   * error (the migration may have failed before reserving). Restores a 'migrating' instance to
   * 'running' unless the migration was committed.
   */
  release(migrationId: string): { changed: boolean } {
    const m = parseInput(migrationIdSchema, migrationId, 'migration id');
    return this.db
      .transaction(() => {
        const res = this.getReservation(m);
        if (!res || res.releasedAt !== null) return { changed: false };
        const t = now();
        this.db.prepare(`UPDATE reservations SET released_at = ? WHERE migration_id = ?`).run(t, m);
        this.db
          .prepare(`UPDATE instances SET state = 'running', updated_at = ? WHERE id = ? AND state = 'migrating'`)
          .run(t, res.instanceId);
        return { changed: true };
      })
      .immediate();
  }

  // -------------------------------------------------------- migration log

  private upsertMigration(
    migrationId: string,
    who: { instanceId: string; source: string; destination: string } | undefined,
  ): void {
    this.db
      .prepare(`INSERT INTO migrations (migration_id, started_at) VALUES (?, ?) ON CONFLICT (migration_id) DO NOTHING`)
      .run(migrationId, now());
    if (who) {
      // Fill in what an early logPhase could not know; never overwrite what is already there.
      this.db
        .prepare(
          `UPDATE migrations SET instance_id = COALESCE(instance_id, ?), source = COALESCE(source, ?),
             destination = COALESCE(destination, ?) WHERE migration_id = ?`,
        )
        .run(who.instanceId, who.source, who.destination, migrationId);
    }
  }

  /** Records the start of a migration (idempotent). reserve() and commitMigration() imply it. */
  beginMigration(input: BeginInput): MigrationRecord {
    const b = parseInput(beginInputSchema, input, 'migration');
    this.db
      .transaction(() =>
        this.upsertMigration(b.migrationId, { instanceId: b.instanceId, source: b.source, destination: b.destination }),
      )
      .immediate();
    return this.getMigration(b.migrationId)!;
  }

  private appendEvent(migrationId: string, phase: Phase, detail: unknown): MigrationEvent {
    const { next } = this.db
      .prepare(`SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM migration_events WHERE migration_id = ?`)
      .get(migrationId) as { next: number };
    const at = now();
    this.db
      .prepare(`INSERT INTO migration_events (migration_id, seq, phase, detail, at) VALUES (?, ?, ?, ?, ?)`)
      .run(migrationId, next, phase, toJson(detail), at);
    return { seq: next, phase, detail: detail ?? null, at };
  }

  /** Appends a phase event (with a timestamp) to the migration's log; creates the log if needed. */
  logPhase(migrationId: string, phase: Phase, detail?: unknown): MigrationEvent {
    const m = parseInput(migrationIdSchema, migrationId, 'migration id');
    const p = parseInput(phaseSchema, phase, 'phase') as Phase;
    const json = toJson(detail);
    if (json !== null && json.length > 64 * 1024) {
      throw new FerryError(ErrorTypes.BadInput, `phase detail for ${m} is over 64 KiB of JSON`);
    }
    return this.db
      .transaction(() => {
        this.upsertMigration(m, undefined);
        return this.appendEvent(m, p, detail);
      })
      .immediate();
  }

  /**
   * The switchover in the books, as ONE idempotent transaction: the instance's host becomes the
   * destination, the reservation is released, the log records the commit. A second run finds
   * the migration committed and changes nothing.
   */
  commitMigration(input: CommitInput): CommitResult {
    const c = parseInput(commitInputSchema, input, 'commit');
    return this.db
      .transaction((): CommitResult => {
        const mig = this.getMigrationRow(c.migrationId);
        if (mig?.committed_at) {
          if (mig.instance_id !== c.instanceId || mig.destination !== c.destination) {
            throw new FerryError(
              ErrorTypes.BadInput,
              `migration ${c.migrationId} was committed for ${mig.instance_id} to ${mig.destination}, not ${c.instanceId} to ${c.destination}`,
            );
          }
          return { changed: false, instance: this.getInstance(c.instanceId) };
        }
        const instance = this.getInstance(c.instanceId);
        this.getNode(c.destination);
        if (instance.host !== c.source && instance.host !== c.destination) {
          throw new FerryError(
            ErrorTypes.BadInput,
            `instance ${instance.id} is on ${instance.host}, neither source ${c.source} nor destination ${c.destination}`,
          );
        }
        const t = now();
        // The spec follows the instance: its disks now live where the destination put them.
        const spec = c.disks ? { ...instance.spec, disks: c.disks } : instance.spec;
        this.db
          .prepare(`UPDATE instances SET host = ?, state = 'running', spec = ?, updated_at = ? WHERE id = ?`)
          .run(c.destination, JSON.stringify(spec), t, instance.id);
        this.db
          .prepare(`UPDATE reservations SET released_at = ? WHERE migration_id = ? AND released_at IS NULL`)
          .run(t, c.migrationId);
        this.upsertMigration(c.migrationId, { instanceId: c.instanceId, source: c.source, destination: c.destination });
        this.db.prepare(`UPDATE migrations SET committed_at = ? WHERE migration_id = ?`).run(t, c.migrationId);
        this.appendEvent(c.migrationId, 'commit', { source: c.source, destination: c.destination });
        return { changed: true, instance: this.getInstance(c.instanceId) };
      })
      .immediate();
  }

  /**
   * Records the outcome. The first outcome wins: later calls return the record unchanged.
   * A committed migration can only have succeeded.
   */
  finishMigration(migrationId: string, outcome: MigrationOutcome, summary?: unknown): MigrationRecord {
    const m = parseInput(migrationIdSchema, migrationId, 'migration id');
    const o = parseInput(outcomeSchema, outcome, 'outcome');
    this.db
      .transaction(() => {
        this.upsertMigration(m, undefined);
        const row = this.getMigrationRow(m)!;
        if (row.outcome !== null) return;
        if (row.committed_at !== null && o !== 'succeeded') {
          throw new FerryError(
            ErrorTypes.BadInput,
            `migration ${m} is committed: its outcome can only be 'succeeded', not '${o}'`,
          );
        }
        this.db
          .prepare(`UPDATE migrations SET outcome = ?, summary = ?, finished_at = ? WHERE migration_id = ?`)
          .run(o, toJson(summary), now(), m);
      })
      .immediate();
    return this.getMigration(m)!;
  }

  private getMigrationRow(migrationId: string): MigrationRow | undefined {
    return this.db.prepare(`SELECT * FROM migrations WHERE migration_id = ?`).get(migrationId) as
      | MigrationRow
      | undefined;
  }

  private migrationFromRow(r: MigrationRow): MigrationRecord {
    const events = (
      this.db
        .prepare(`SELECT seq, phase, detail, at FROM migration_events WHERE migration_id = ? ORDER BY seq`)
        .all(r.migration_id) as EventRow[]
    ).map((e) => ({ seq: e.seq, phase: e.phase, detail: fromJson(e.detail), at: e.at }));
    return {
      migrationId: r.migration_id,
      instanceId: r.instance_id,
      source: r.source,
      destination: r.destination,
      startedAt: r.started_at,
      committedAt: r.committed_at,
      finishedAt: r.finished_at,
      outcome: r.outcome,
      summary: fromJson(r.summary),
      events,
    };
  }

  getMigration(migrationId: string): MigrationRecord | undefined {
    const m = parseInput(migrationIdSchema, migrationId, 'migration id');
    const row = this.getMigrationRow(m);
    return row ? this.migrationFromRow(row) : undefined;
  }

  /** Newest first. */
  listMigrations(filter: { instanceId?: string; limit?: number } = {}): MigrationRecord[] {
    const limit = Math.max(1, Math.min(10_000, Math.trunc(filter.limit ?? 100)));
    const rows =
      filter.instanceId !== undefined
        ? (this.db
            .prepare(`SELECT * FROM migrations WHERE instance_id = ? ORDER BY started_at DESC, migration_id LIMIT ?`)
            .all(parseInput(idSchema, filter.instanceId, 'instance id'), limit) as MigrationRow[])
        : (this.db
            .prepare(`SELECT * FROM migrations ORDER BY started_at DESC, migration_id LIMIT ?`)
            .all(limit) as MigrationRow[]);
    return rows.map((r) => this.migrationFromRow(r));
  }

  // ---------------------------------------------------------- consistency

  /** Every invariant the inventory should hold; an empty list means all is well. */
  checkConsistency(): ConsistencyViolation[] {
    const out: ConsistencyViolation[] = [];
    const read = this.db.transaction(() => {
      for (const n of this.listNodes()) {
        const u = this.used(n.name);
        for (const k of ['vcpus', 'memoryMiB', 'diskBytes'] as const) {
          if (u[k] > n.capacity[k]) {
            out.push({
              kind: 'over-capacity',
              subject: n.name,
              message: `node ${n.name} is over capacity on ${k}: ${fmtResource(k, u[k])} used or reserved of ${fmtResource(k, n.capacity[k])}`,
            });
          }
        }
      }
      const orphans = this.db
        .prepare(`SELECT i.id, i.host FROM instances i LEFT JOIN nodes n ON n.name = i.host WHERE n.name IS NULL`)
        .all() as { id: string; host: string }[];
      for (const o of orphans) {
        out.push({ kind: 'instance-on-unknown-node', subject: o.id, message: `instance ${o.id} is on unknown node ${o.host}` });
      }
      const mismatched = this.db
        .prepare(
          `SELECT i.id, i.host, i.spec, n.hypervisor FROM instances i JOIN nodes n ON n.name = i.host`,
        )
        .all() as { id: string; host: string; spec: string; hypervisor: string }[];
      for (const m of mismatched) {
        const kind = (JSON.parse(m.spec) as InstanceSpec).hypervisor;
        if (kind !== m.hypervisor) {
          out.push({
            kind: 'hypervisor-mismatch',
            subject: m.id,
            message: `instance ${m.id} is a ${kind} guest on ${m.hypervisor} node ${m.host}`,
          });
        }
      }
      const badRes = this.db
        .prepare(
          `SELECT r.migration_id, r.node, r.instance_id, n.name AS node_found, i.id AS instance_found
             FROM reservations r LEFT JOIN nodes n ON n.name = r.node LEFT JOIN instances i ON i.id = r.instance_id
            WHERE r.released_at IS NULL AND (n.name IS NULL OR i.id IS NULL)`,
        )
        .all() as { migration_id: string; node: string; instance_id: string; node_found: string | null; instance_found: string | null }[];
      for (const r of badRes) {
        if (r.node_found === null) {
          out.push({ kind: 'reservation-unknown-node', subject: r.migration_id, message: `live reservation ${r.migration_id} is on unknown node ${r.node}` });
        }
        if (r.instance_found === null) {
          out.push({ kind: 'reservation-unknown-instance', subject: r.migration_id, message: `live reservation ${r.migration_id} is for unknown instance ${r.instance_id}` });
        }
      }
      const leaked = this.db
        .prepare(
          `SELECT r.migration_id, m.committed_at, m.outcome FROM reservations r JOIN migrations m ON m.migration_id = r.migration_id
            WHERE r.released_at IS NULL AND (m.committed_at IS NOT NULL OR m.outcome IS NOT NULL)`,
        )
        .all() as { migration_id: string; committed_at: string | null; outcome: string | null }[];
      for (const l of leaked) {
        if (l.committed_at !== null) {
          out.push({ kind: 'reservation-live-after-commit', subject: l.migration_id, message: `migration ${l.migration_id} is committed but its reservation still holds capacity` });
        } else {
          out.push({ kind: 'reservation-live-after-finish', subject: l.migration_id, message: `migration ${l.migration_id} ended (${l.outcome}) but its reservation still holds capacity` });
        }
      }
      const stuck = this.db
        .prepare(
          `SELECT i.id FROM instances i WHERE i.state = 'migrating' AND NOT EXISTS
             (SELECT 1 FROM reservations r WHERE r.instance_id = i.id AND r.released_at IS NULL)`,
        )
        .all() as { id: string }[];
      for (const s of stuck) {
        out.push({ kind: 'migrating-without-reservation', subject: s.id, message: `instance ${s.id} is marked migrating but no reservation is live` });
      }
    });
    read.deferred();
    return out;
  }
}
