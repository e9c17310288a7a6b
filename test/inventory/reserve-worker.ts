// Child process of concurrency.test.ts: its own connection to the inventory file, racing the
// other child for the last free slot of node-b. After each successful reserve it reads how much
// of node-b is taken, so an overcommit is seen even though every reservation is released again.
import { existsSync, writeFileSync } from 'node:fs';
import { openInventory } from '../../src/inventory/index.js';
import { FerryError } from '../../src/shared/errors.js';

const [path, prefix, instanceId, iterations] = process.argv.slice(2);
const inv = openInventory(path!);
// Barrier: say ready, then spin until the parent says go, so both processes contend for real.
writeFileSync(`${path}.ready-${prefix}`, '');
while (!existsSync(`${path}.go`)) {
  // spin
}
const pause = new Int32Array(new SharedArrayBuffer(4));
const result = { ok: 0, full: 0, other: [] as string[], minFreeVcpus: Infinity };
for (let i = 0; i < Number(iterations); i++) {
  const migrationId = `${prefix}-${i}`;
  try {
    inv.reserve({ migrationId, instanceId: instanceId!, node: 'node-b', vcpus: 1, memoryMiB: 100, diskBytes: 1 << 20 });
    result.ok++;
    result.minFreeVcpus = Math.min(result.minFreeVcpus, inv.freeCapacity('node-b').vcpus);
    inv.release(migrationId);
    // Let the other process in now and then, or the holder could win every round.
    if (i % 2 === 0) Atomics.wait(pause, 0, 0, 1);
  } catch (err) {
    if (err instanceof FerryError && err.type === 'DestinationFull') result.full++;
    else result.other.push(String(err));
    // A refusal returns at once: without a pause, one process could spend all its iterations
    // while the other holds the slot once (seen in CI: 0 of 400 won), and the race would not be one.
    Atomics.wait(pause, 0, 0, 1);
  }
}
inv.close();
process.stdout.write(JSON.stringify(result) + '\n');
