// The `ferry` command line (commander). Each action returns an exit code; errors become a message
// on stderr and a documented exit code (docs/cli.md).
import { Command, Option } from 'commander';
import { createContext, CliError, EXIT, type CliContext } from './context.js';
import * as mig from './migrate-commands.js';
import * as inv from './inventory-commands.js';
import { show } from './show-command.js';
import { loadConfig } from '../config/index.js';

export function buildProgram(): { program: Command; ctx: CliContext; result: { code: number } } {
  const program = new Command('ferry');
  const result = { code: EXIT.ok as number };
  const ctx = createContext(() => program.opts().config as string | undefined);
  const run =
    <A extends unknown[]>(fn: (...args: A) => Promise<number>) =>
    async (...args: A) => {
      result.code = await fn(...args);
    };

  program
    .description('Live-migrate virtual machines with their local disks between Xen or KVM hosts')
    .option('-c, --config <file>', 'config file (default: $FERRY_CONFIG, else /etc/ferry/ferry.yaml if present)')
    .showHelpAfterError()
    // Set before the subcommands are added so they inherit it: commander then throws instead of
    // exiting, and main() maps its errors to our exit codes.
    .exitOverride()
    .configureOutput({ outputError: (s, write) => write(s) });

  program
    .command('migrate')
    .description('live-migrate an instance, with its disk, to another node')
    .argument('<instance>', 'instance id')
    .requiredOption('--to <node>', 'destination node')
    .option('--wait', 'wait for the end, with a progress bar (default)')
    .option('--detach', 'start the migration and return at once')
    .option('--json', 'print JSON instead of text')
    .option('--codec <codec>', 'disk codec: lzo (default) or none')
    .option('--chunk-size <size>', 'disk chunk size, e.g. 1MiB')
    .option('--bandwidth <rate>', 'cap for disk and memory streams, e.g. 100Mbit; 0 = none')
    .option('--downtime <duration>', 'downtime budget, e.g. 2s (at most 20s)')
    .option('--max-rounds <n>', 'dirty rounds before giving up')
    .option('--no-tls', 'plain TCP disk stream (lab use only)')
    .option('--verify', 'hash both disks while paused, before the point of no return')
    .option('--keep-source', "after success keep the source's disks, renamed <name>.ferry-migrated, instead of removing them")
    .action(run((instance: string, flags: mig.MigrateFlags) => mig.migrate(ctx, instance, flags)));

  program
    .command('status')
    .description('show the phase and progress of a migration')
    .argument('<id>', 'instance id (its running or newest migration) or workflow id')
    .option('--json', 'print JSON')
    .action(run((id: string, f: { json?: boolean }) => mig.status(ctx, id, f)));

  program
    .command('show')
    .description('the whole story of one migration, finished or not: phases, the pause in parts, streams, rounds, errors')
    .argument('<id>', 'instance id (its running or newest migration) or workflow id')
    .option('--json', 'print JSON')
    .option('--svg <file>', 'also draw it: phases, throughput and the pause, as an SVG file')
    .action(run((id: string, f: { json?: boolean; svg?: string }) => show(ctx, id, f)));

  program
    .command('cancel')
    .description('cancel a migration: rolls back before the point of no return, refused after it')
    .argument('<id>', 'instance id or workflow id')
    .option('--reason <text>', 'recorded in the migration log')
    .option('--json', 'print JSON')
    .action(run((id: string, f: { reason?: string; json?: boolean }) => mig.cancel(ctx, id, f)));

  program
    .command('list')
    .description('list migrations (running and recent), newest first, with the reason of failed and rolled-back ones')
    .option('--json', 'print a JSON array')
    .option('--limit <n>', 'at most n rows', '50')
    .option('--instance <id>', 'only migrations of this instance')
    .option('--node <name>', 'only migrations from or to this node')
    .option('--phase <phase>', 'only migrations now in (or ended in) this phase')
    .option('--outcome <outcome>', 'only migrations that ended so: migrated, rolled-back or failed')
    .action(run((f: mig.ListFilters) => mig.list(ctx, f)));

  program
    .command('history')
    .description("export a migration's Temporal event history as JSON")
    .argument('<id>', 'instance id (its running or newest migration) or workflow id')
    .option('-o, --out <file>', 'write to a file instead of stdout')
    .action(run((id: string, f: { out?: string }) => mig.history(ctx, id, f)));

  program
    .command('replay')
    .description('replay an exported history against the current workflow code (catches non-determinism)')
    .argument('<file>', 'history JSON from `ferry history`')
    .action(run((file: string) => mig.replay(file)));

  inv.addInventoryCommands(program, ctx, run);

  program
    .command('worker')
    .description('run a worker: the controller (workflows, inventory) or a node worker (hypervisor, disks)')
    .addOption(new Option('--controller', 'run the controller worker (queue ferry-control)').conflicts('node'))
    .option('--node <name>', 'run the node worker of this host (queue ferry-node-<name>)')
    .action(
      run(async (f: { controller?: boolean; node?: string }) => {
        if (!f.controller && !f.node) throw new CliError('worker: pass --controller or --node NAME', EXIT.usage);
        if (f.controller) {
          const { createControllerWorker } = await import('../workers/controller.js');
          await (await createControllerWorker(ctx.config())).run();
        } else {
          const { createNodeWorker } = await import('../workers/node.js');
          const cfg = loadConfig({ file: program.opts().config as string | undefined, nodeName: f.node });
          await (await createNodeWorker(cfg)).run();
        }
        return EXIT.ok;
      }),
    );

  return { program, ctx, result };
}

/** Runs the CLI and returns the exit code; never throws. */
export async function main(argv: string[]): Promise<number> {
  const { program, ctx, result } = buildProgram();
  try {
    await program.parseAsync(argv);
    return result.code;
  } catch (err) {
    // `code` is commander's string, or a number from gRPC or the file system: check before reading it.
    const e = err as { code?: unknown; exitCode?: number; message?: string };
    const code = typeof e.code === 'string' ? e.code : '';
    if (code === 'commander.helpDisplayed' || code === 'commander.version' || code === 'commander.help') return EXIT.ok;
    if (code.startsWith('commander.')) return EXIT.usage;
    if (err instanceof CliError) {
      process.stderr.write(`ferry: ${err.message}\n`);
      return err.exitCode;
    }
    process.stderr.write(`ferry: ${e.message ?? String(err)}\n`);
    return EXIT.failed;
  } finally {
    await ctx.close().catch(() => undefined);
  }
}
