export { migrateInstance } from './migrate-instance.js';
export { syncNode } from './sync-node.js';
export { checkMigration } from './check-migration.js';
