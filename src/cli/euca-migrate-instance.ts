#!/usr/bin/env node
// The paper's own form of the command: `euca-migrate-instance -i INSTANCE -d NODE`, kept for
// operators' scripts. It is `ferry migrate INSTANCE --to NODE --wait`.
import { Command } from 'commander';
import { main } from './program.js';

const cmd = new Command('euca-migrate-instance')
  .description('migrate an instance to another node (Eucalyptus-style alias of `ferry migrate`)')
  .requiredOption('-i, --instance <id>', 'instance id')
  .requiredOption('-d, --destination <node>', 'destination node')
  .option('-c, --config <file>', 'config file')
  .option('--json', 'print JSON')
  .parse(process.argv);
const o = cmd.opts<{ instance: string; destination: string; config?: string; json?: boolean }>();
const args = [...(o.config ? ['--config', o.config] : []), 'migrate', o.instance, '--to', o.destination, ...(o.json ? ['--json'] : [])];
process.exitCode = await main([process.argv[0]!, 'ferry', ...args]);
