// The real Temporal dev server: started on 127.0.0.1 with random ports, a client connects, the
// Ferry search attributes are registered, a second start reuses it, and stop() ends the process.
import { afterAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Connection, Client } from '@temporalio/client';
import { FERRY_SEARCH_ATTRIBUTES, isTemporalUp, startDevServer, type DevServer } from '../../src/labs/temporal-dev.js';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

/** Whether `port` can be bound on 127.0.0.1 right now. */
function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * A frontend port whose companions are free too: the dev server also binds its HTTP API on
 * port + 1000 and its internal services just above port (CI once lost the HTTP API's to another socket).
 */
async function freeServerPort(): Promise<number> {
  for (;;) {
    const port = await freePort();
    if (port + 1000 > 65535) continue;
    const companions = [1, 2, 3, 4, 1000].map((d) => port + d);
    if ((await Promise.all(companions.map(isFree))).every(Boolean)) return port;
  }
}

describe('temporal dev server', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-temporal-'));
  let server: DevServer | undefined;
  afterAll(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts, answers a client, has the Ferry search attributes, is reused, and stops', async () => {
    const port = await freeServerPort();
    const uiPort = await freePort();
    const dbFile = join(dir, 'temporal.db');
    server = await startDevServer({ ip: '127.0.0.1', port, uiPort, dbFile, logFile: join(dir, 'temporal.log') });
    expect(server.address).toBe(`127.0.0.1:${port}`);
    expect(server.reused).toBe(false);
    expect(existsSync(dbFile)).toBe(true);

    const connection = await Connection.connect({ address: server.address });
    try {
      const client = new Client({ connection, namespace: 'default' });
      const ns = await client.workflowService.describeNamespace({ namespace: 'default' });
      expect(ns.namespaceInfo?.name).toBe('default');
      const attrs = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
      for (const name of Object.keys(FERRY_SEARCH_ATTRIBUTES)) expect(Object.keys(attrs.customAttributes ?? {})).toContain(name);
    } finally {
      await connection.close();
    }
    // The Web UI answers on 127.0.0.1:uiPort.
    const ui = await fetch(`http://127.0.0.1:${uiPort}/`);
    expect(ui.ok).toBe(true);

    // Reuse: a second start finds the running server and registers a search attribute it lacks.
    const again = await startDevServer({ ip: '127.0.0.1', port, uiPort, dbFile, searchAttributes: { FerryTestOnly: 'Int' } });
    expect(again.reused).toBe(true);
    const c2 = await Connection.connect({ address: server.address });
    try {
      const attrs = await c2.operatorService.listSearchAttributes({ namespace: 'default' });
      expect(Object.keys(attrs.customAttributes ?? {})).toContain('FerryTestOnly');
    } finally {
      await c2.close();
    }
    await again.stop(); // a no-op: the first server keeps running
    expect(await isTemporalUp(server.address)).toBe(true);

    await server.stop();
    expect(await isTemporalUp(server.address, 1000)).toBe(false);
    server = undefined;
  });

  it('says why when the server cannot start', async () => {
    // Port taken by something that is not Temporal: the server exits and the error shows its log.
    const blocker = createServer().listen(0, '127.0.0.1');
    await new Promise((r) => blocker.once('listening', r));
    const port = (blocker.address() as { port: number }).port;
    try {
      await expect(
        startDevServer({ ip: '127.0.0.1', port, uiPort: await freePort(), logFile: join(dir, 'fail.log'), startTimeoutMs: 60_000 }),
      ).rejects.toThrow(/temporal dev server at 127\.0\.0\.1:\d+ (exited|did not answer)/);
    } finally {
      blocker.close();
    }
  });
});
