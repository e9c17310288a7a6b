// Versioned schema of the inventory. Each migration is plain SQL that PostgreSQL also accepts
// (VARCHAR/INTEGER/BIGINT/TEXT, CHECK constraints, composite keys instead of AUTOINCREMENT,
// timestamps as ISO-8601 text), so a PostgreSQL backend can replay the same list.
// The applied version lives in `PRAGMA user_version` (SQLite); PostgreSQL would keep it in a table.
import type Database from 'better-sqlite3';
import { FerryError, ErrorTypes } from '../shared/errors.js';

export interface SchemaMigration {
  version: number;
  description: string;
  statements: string[];
  /** Drops and recreates a table that others reference: runs with foreign keys off, checked after. */
  rebuildsTables?: boolean;
}

export const MIGRATIONS: readonly SchemaMigration[] = [
  {
    version: 1,
    description: 'nodes, instances, reservations, migration log',
    statements: [
      `CREATE TABLE nodes (
        name VARCHAR(63) PRIMARY KEY,
        hypervisor VARCHAR(8) NOT NULL CHECK (hypervisor IN ('qemu', 'xen')),
        control_address VARCHAR(255) NOT NULL,
        data_address VARCHAR(255) NOT NULL,
        state VARCHAR(8) NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'drain')),
        vcpus INTEGER NOT NULL CHECK (vcpus >= 0),
        memory_mib BIGINT NOT NULL CHECK (memory_mib >= 0),
        disk_bytes BIGINT NOT NULL CHECK (disk_bytes >= 0),
        extra TEXT NOT NULL DEFAULT '{}',
        created_at VARCHAR(32) NOT NULL,
        updated_at VARCHAR(32) NOT NULL
      )`,
      `CREATE TABLE instances (
        id VARCHAR(63) PRIMARY KEY,
        host VARCHAR(63) NOT NULL REFERENCES nodes(name),
        vcpus INTEGER NOT NULL CHECK (vcpus > 0),
        memory_mib BIGINT NOT NULL CHECK (memory_mib > 0),
        disk_bytes BIGINT NOT NULL CHECK (disk_bytes > 0),
        spec TEXT NOT NULL,
        state VARCHAR(16) NOT NULL CHECK (state IN ('running', 'migrating', 'stopped')),
        created_at VARCHAR(32) NOT NULL,
        updated_at VARCHAR(32) NOT NULL
      )`,
      `CREATE INDEX instances_host ON instances(host)`,
      `CREATE TABLE reservations (
        migration_id VARCHAR(128) PRIMARY KEY,
        instance_id VARCHAR(63) NOT NULL REFERENCES instances(id),
        node VARCHAR(63) NOT NULL REFERENCES nodes(name),
        vcpus INTEGER NOT NULL CHECK (vcpus >= 0),
        memory_mib BIGINT NOT NULL CHECK (memory_mib >= 0),
        disk_bytes BIGINT NOT NULL CHECK (disk_bytes >= 0),
        created_at VARCHAR(32) NOT NULL,
        released_at VARCHAR(32)
      )`,
      `CREATE INDEX reservations_node_live ON reservations(node, released_at)`,
      // Instance, source and destination may be unknown when the first phase is logged
      // (validation fails before they are resolved), hence nullable.
      `CREATE TABLE migrations (
        migration_id VARCHAR(128) PRIMARY KEY,
        instance_id VARCHAR(63),
        source VARCHAR(63),
        destination VARCHAR(63),
        started_at VARCHAR(32) NOT NULL,
        committed_at VARCHAR(32),
        finished_at VARCHAR(32),
        outcome VARCHAR(16) CHECK (outcome IN ('succeeded', 'rolled-back', 'failed', 'cancelled')),
        summary TEXT
      )`,
      `CREATE INDEX migrations_instance ON migrations(instance_id)`,
      `CREATE TABLE migration_events (
        migration_id VARCHAR(128) NOT NULL REFERENCES migrations(migration_id),
        seq INTEGER NOT NULL,
        phase VARCHAR(32) NOT NULL,
        detail TEXT,
        at VARCHAR(32) NOT NULL,
        PRIMARY KEY (migration_id, seq)
      )`,
    ],
  },
  {
    version: 2,
    description: "nodes may run libvirt (the hypervisor CHECK gains 'libvirt')",
    // SQLite cannot alter a CHECK: the table is rebuilt (sqlite.org/lang_altertable.html, "other
    // kinds of table schema changes"), with foreign keys off around it (see migrate). The rename
    // keeps the other tables' REFERENCES nodes(name) pointing at the new table.
    rebuildsTables: true,
    statements: [
      `CREATE TABLE nodes_v2 (
        name VARCHAR(63) PRIMARY KEY,
        hypervisor VARCHAR(8) NOT NULL CHECK (hypervisor IN ('qemu', 'xen', 'libvirt')),
        control_address VARCHAR(255) NOT NULL,
        data_address VARCHAR(255) NOT NULL,
        state VARCHAR(8) NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'down', 'drain')),
        vcpus INTEGER NOT NULL CHECK (vcpus >= 0),
        memory_mib BIGINT NOT NULL CHECK (memory_mib >= 0),
        disk_bytes BIGINT NOT NULL CHECK (disk_bytes >= 0),
        extra TEXT NOT NULL DEFAULT '{}',
        created_at VARCHAR(32) NOT NULL,
        updated_at VARCHAR(32) NOT NULL
      )`,
      `INSERT INTO nodes_v2 (name, hypervisor, control_address, data_address, state, vcpus, memory_mib, disk_bytes, extra, created_at, updated_at)
        SELECT name, hypervisor, control_address, data_address, state, vcpus, memory_mib, disk_bytes, extra, created_at, updated_at FROM nodes`,
      `DROP TABLE nodes`,
      `ALTER TABLE nodes_v2 RENAME TO nodes`,
    ],
  },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** Brings the database to SCHEMA_VERSION. Safe when several processes open the file at once. */
export function migrate(db: Database.Database): number {
  // PRAGMA foreign_keys is a no-op inside a transaction, so it is switched around it; the
  // transaction ends with foreign_key_check, so a rebuild that broke a reference rolls back.
  const fk = db.pragma('foreign_keys', { simple: true }) as number;
  const current = db.pragma('user_version', { simple: true }) as number;
  const rebuilds = MIGRATIONS.some((m) => m.version > current && m.rebuildsTables);
  if (rebuilds) db.pragma('foreign_keys = OFF');
  try {
    return migrateInTransaction(db);
  } finally {
    if (rebuilds && fk) db.pragma('foreign_keys = ON');
  }
}

function migrateInTransaction(db: Database.Database): number {
  const run = db.transaction(() => {
    // Re-read inside the write lock: another process may have migrated meanwhile.
    const current = db.pragma('user_version', { simple: true }) as number;
    if (current > SCHEMA_VERSION) {
      throw new FerryError(
        ErrorTypes.BadInput,
        `inventory schema version ${current} is newer than this Ferry (${SCHEMA_VERSION}): upgrade Ferry`,
      );
    }
    // References already broken before (the consistency check reports them) do not block an upgrade.
    const upgrading = current < SCHEMA_VERSION;
    const brokenBefore = upgrading ? (db.pragma('foreign_key_check') as unknown[]).length : 0;
    for (const m of MIGRATIONS) {
      if (m.version <= current) continue;
      for (const sql of m.statements) db.exec(sql);
      // PRAGMA takes no bound parameters; the value is a compile-time integer from MIGRATIONS.
      db.pragma(`user_version = ${m.version}`);
    }
    const broken = upgrading ? (db.pragma('foreign_key_check') as unknown[]).length - brokenBefore : 0;
    if (broken > 0) throw new FerryError(ErrorTypes.DriverError, `inventory schema migration broke ${broken} references; nothing was changed`);
    return db.pragma('user_version', { simple: true }) as number;
  });
  return run.immediate();
}
