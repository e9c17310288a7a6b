// Public face of the inventory: import from here.
export { openInventory, Inventory } from './inventory.js';
export type { InventoryRepository, AddInstanceInput, CommitResult, OpenOptions, SyncReport } from './inventory.js';
export type {
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
export { MIGRATION_ID_PATTERN } from './validation.js';
export type { NodeInput, ReserveInput, CommitInput, BeginInput } from './validation.js';
export { SCHEMA_VERSION, MIGRATIONS } from './schema.js';
