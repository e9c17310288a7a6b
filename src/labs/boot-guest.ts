// Boots one lab guest on the node this process runs on (the lab runs it inside the node's network
// namespace): `boot-guest.js SPEC_JSON`, state dir from FERRY_STATE_DIR.
import { createQemuDriver } from '../drivers/qemu/qemu-driver.js';
import type { InstanceSpec } from '../shared/instance.js';

const spec = JSON.parse(process.argv[2] ?? '{}') as InstanceSpec;
const stateDir = process.env.FERRY_STATE_DIR;
if (!stateDir) throw new Error('FERRY_STATE_DIR is not set');
const driver = createQemuDriver({ stateDir });
await driver.start(spec);
process.stdout.write(`${spec.id} started\n`);
