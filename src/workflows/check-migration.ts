// Phase 1's checks on the controller, with no side effect, as a workflow of their own: `ferry
// migrate` runs it before starting a migration, so a request the controller would refuse (an
// unknown instance, an option past its limit, a full destination) is refused before anything
// starts. Deterministic code only.
import type { MigrationPlan, MigrationRequest } from '../activities/control.js';
import { control } from './proxies.js';

export async function checkMigration(input: MigrationRequest): Promise<MigrationPlan> {
  return control.checkMigration(input);
}
