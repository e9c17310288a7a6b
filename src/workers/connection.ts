// Temporal connection settings come from the config (file + environment), never hard-coded.
import { readFile } from 'node:fs/promises';
import { Connection, Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import type { FerryConfig } from '../config/index.js';

async function tlsOptions(cfg: FerryConfig) {
  const t = cfg.temporal.tls;
  if (!t) return undefined;
  return {
    serverNameOverride: t.serverName,
    serverRootCACertificate: t.caFile ? await readFile(t.caFile) : undefined,
    clientCertPair: t.certFile && t.keyFile ? { crt: await readFile(t.certFile), key: await readFile(t.keyFile) } : undefined,
  };
}

export async function connectClient(cfg: FerryConfig): Promise<Client> {
  const connection = await Connection.connect({ address: cfg.temporal.address, tls: await tlsOptions(cfg) });
  return new Client({ connection, namespace: cfg.temporal.namespace });
}

export async function connectWorker(cfg: FerryConfig): Promise<NativeConnection> {
  return NativeConnection.connect({ address: cfg.temporal.address, tls: await tlsOptions(cfg) });
}
