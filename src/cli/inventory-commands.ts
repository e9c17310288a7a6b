// `ferry node ...` and `ferry instance ...`: the inventory, read and written on the controller's
// host (the SQLite file in the config). Migrations themselves only change it through the workflow.
import { HYPERVISOR_KINDS, type HypervisorKind } from '../shared/instance.js';
import type { Command } from 'commander';
import { openInventory, type Inventory } from '../inventory/index.js';
import { parseSize } from '../config/index.js';
import { CliError, EXIT, type CliContext } from './context.js';
import { formatBytes } from './progress.js';
import { WorkflowExecutionAlreadyStartedError, WorkflowFailedError } from '@temporalio/client';
import { CONTROL_TASK_QUEUE, SYNC_WORKFLOW_TYPE, syncWorkflowId } from '../shared/names.js';
import type { SyncNodeInput, SyncNodeResult } from '../shared/messages.js';

type Run = <A extends unknown[]>(fn: (...args: A) => Promise<number>) => (...args: A) => Promise<void>;

export function addInventoryCommands(program: Command, ctx: CliContext, run: Run) {
  const withInventory = async <T>(fn: (inv: Inventory) => T): Promise<T> => {
    const inv = openInventory(ctx.config().inventory.path);
    try {
      return fn(inv);
    } finally {
      inv.close();
    }
  };
  const print = (json: boolean | undefined, value: unknown, text: () => string) =>
    process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text()}\n`);

  const node = program.command('node').description('hypervisor hosts in the inventory');
  node
    .command('add')
    .description('register a host')
    .argument('<name>', 'node name (its worker serves queue ferry-node-<name>)')
    .requiredOption('--hypervisor <kind>', HYPERVISOR_KINDS.join(', '))
    .requiredOption('--data-address <addr>', 'address of the migration network (disk and memory streams)')
    .option('--control-address <addr>', 'management address (default: the data address)')
    .requiredOption('--vcpus <n>', 'vCPU capacity')
    .requiredOption('--memory <size>', 'memory capacity, e.g. 16GiB')
    .requiredOption('--disk <size>', 'disk capacity, e.g. 500GiB')
    .option('--json', 'print JSON')
    .action(
      run(async (name: string, f: Record<string, string | boolean | undefined>) => {
        const rec = await withInventory((inv) =>
          inv.addNode({
            name,
            hypervisor: f.hypervisor as HypervisorKind,
            dataAddress: String(f.dataAddress),
            controlAddress: String(f.controlAddress ?? f.dataAddress),
            capacity: {
              vcpus: Number(f.vcpus),
              memoryMiB: Math.floor(parseSize(String(f.memory)) / (1024 * 1024)),
              diskBytes: parseSize(String(f.disk)),
            },
          }),
        );
        print(f.json as boolean, rec, () => `added node ${rec.name}`);
        return EXIT.ok;
      }),
    );
  node
    .command('sync')
    .description("import what the node's hypervisor runs: every guest, as the host describes it")
    .argument('<name>', 'node name')
    .option('--json', 'print JSON')
    .action(
      run(async (name: string, f: { json?: boolean }) => {
        const client = await ctx.client();
        let r: SyncNodeResult;
        try {
          r = await client.workflow.execute(SYNC_WORKFLOW_TYPE, {
            taskQueue: CONTROL_TASK_QUEUE,
            workflowId: syncWorkflowId(name),
            args: [{ node: name } satisfies SyncNodeInput],
            workflowExecutionTimeout: '15m', // 3 attempts of a 4-minute discovery, and the rest
          });
        } catch (err) {
          if (err instanceof WorkflowExecutionAlreadyStartedError) throw new CliError(`a sync of ${name} is already running`, EXIT.refused);
          if (err instanceof WorkflowFailedError) {
            const cause = (err.cause as { cause?: { message?: string; type?: string } } | undefined)?.cause ?? err.cause;
            throw new CliError(`sync of ${name} failed: ${cause?.message ?? err.message}`, (cause as { type?: string } | undefined)?.type === 'UnknownNode' ? EXIT.notFound : EXIT.failed);
          }
          throw err;
        }
        print(f.json, r, () => formatSync(r));
        return EXIT.ok;
      }),
    );
  node
    .command('list')
    .description('list hosts with capacity and free resources')
    .option('--json', 'print a JSON array')
    .action(
      run(async (f: { json?: boolean }) => {
        const rows = await withInventory((inv) => inv.listNodes().map((n) => ({ ...n, free: inv.freeCapacity(n.name) })));
        print(f.json, rows, () =>
          rows.length === 0
            ? 'no nodes'
            : rows.map((n) => `${n.name}\t${n.hypervisor}\t${n.state}\t${n.dataAddress}\tfree ${n.free.vcpus}/${n.capacity.vcpus} vCPU, ${n.free.memoryMiB}/${n.capacity.memoryMiB} MiB, ${formatBytes(n.free.diskBytes)}/${formatBytes(n.capacity.diskBytes)}`).join('\n'),
        );
        return EXIT.ok;
      }),
    );
  node
    .command('show')
    .argument('<name>')
    .option('--json', 'print JSON')
    .action(
      run(async (name: string, f: { json?: boolean }) => {
        const rec = await withInventory((inv) => {
          const n = inv.findNode(name);
          return n && { ...n, free: inv.freeCapacity(name), instances: inv.listInstances({ host: name }).map((i) => i.id) };
        });
        if (!rec) throw new CliError(`unknown node ${name}`, EXIT.notFound);
        print(f.json, rec, () => JSON.stringify(rec, null, 2));
        return EXIT.ok;
      }),
    );

  const instance = program.command('instance').description('instances in the inventory');
  instance
    .command('add')
    .description('register an instance that runs on a node')
    .argument('<id>', 'instance id')
    .requiredOption('--host <node>', 'node it runs on')
    .requiredOption('--spec <json>', 'InstanceSpec as JSON (docs/inventory.md)')
    .option('--json', 'print JSON')
    .action(
      run(async (id: string, f: { host: string; spec: string; json?: boolean }) => {
        let spec: unknown;
        try {
          spec = JSON.parse(f.spec);
        } catch {
          throw new CliError('--spec is not valid JSON', EXIT.usage);
        }
        const rec = await withInventory((inv) => inv.addInstance({ host: f.host, spec: { ...(spec as object), id } as never }));
        print(f.json, rec, () => `added instance ${rec.id} on ${rec.host}`);
        return EXIT.ok;
      }),
    );
  instance
    .command('list')
    .option('--host <node>', 'only instances on this node')
    .option('--json', 'print a JSON array')
    .action(
      run(async (f: { host?: string; json?: boolean }) => {
        const rows = await withInventory((inv) => inv.listInstances(f.host ? { host: f.host } : {}));
        print(f.json, rows, () => (rows.length === 0 ? 'no instances' : rows.map((i) => `${i.id}\t${i.host}\t${i.state}\t${i.vcpus} vCPU\t${i.memoryMiB} MiB\t${formatBytes(i.diskBytes)}`).join('\n')));
        return EXIT.ok;
      }),
    );
  instance
    .command('show')
    .argument('<id>')
    .option('--json', 'print JSON')
    .action(
      run(async (id: string, f: { json?: boolean }) => {
        const rec = await withInventory((inv) => inv.findInstance(id));
        if (!rec) throw new CliError(`unknown instance ${id}`, EXIT.notFound);
        print(f.json, rec, () => JSON.stringify(rec, null, 2));
        return EXIT.ok;
      }),
    );
}

function formatSync(r: SyncNodeResult): string {
  const names = (xs: string[]) => (xs.length ? ` (${xs.join(', ')})` : '');
  const lines = [
    `${r.node}: ${r.added.length} added${names(r.added)}, ${r.updated.length} updated${names(r.updated)}, ${r.unchanged.length} unchanged${names(r.unchanged)}`,
    ...r.refused.map((x) => `  cannot migrate ${x.name}: ${x.reason}`),
    ...r.conflicts.map((x) => `  not recorded ${x.id}: ${x.reason}`),
    ...r.missing.map((id) => `  recorded on ${r.node} but not running there: ${id}`),
  ];
  if (r.overCapacity) lines.push(`  ${r.node} runs more than its recorded capacity: \`ferry node show ${r.node}\``);
  return lines.join('\n');
}
