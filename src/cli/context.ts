// What every command needs: the config (file + environment) and, lazily, a Temporal client.
import type { Client } from '@temporalio/client';
import { loadConfig, type FerryConfig } from '../config/index.js';
import { connectClient } from '../workers/connection.js';

export interface CliContext {
  config(): FerryConfig;
  client(): Promise<Client>;
  close(): Promise<void>;
}

export function createContext(getConfigFile: () => string | undefined): CliContext {
  let cfg: FerryConfig | undefined;
  let client: Client | undefined;
  const config = () => (cfg ??= loadConfig({ file: getConfigFile() }));
  return {
    config,
    async client() {
      return (client ??= await connectClient(config()));
    },
    async close() {
      await client?.connection.close();
    },
  };
}

/** Exit codes a script can rely on (docs/cli.md). */
export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
  notFound: 3,
  rolledBack: 4,
  refused: 5,
} as const;

export class CliError extends Error {
  constructor(message: string, public readonly exitCode: number = EXIT.failed) {
    super(message);
  }
}
