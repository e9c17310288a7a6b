export { migrateInstance } from './migrate-instance.js';
