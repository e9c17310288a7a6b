// A real Temporal server for tests, labs and the demo: `temporal server start-dev` (SQLite
// persistence, Web UI on 127.0.0.1), with Ferry's search attributes registered. An already
// running server at the same address is reused (and given any missing search attribute).
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
// @temporalio/proto is CommonJS (`module.exports = require(...)`), whose names Node's ESM loader
// cannot see: a named import works under vitest but not under plain node or tsx.
import proto from '@temporalio/proto';

const execFileP = promisify(execFile);
const IndexedValueType = proto.temporal.api.enums.v1.IndexedValueType;

export type SearchAttributeType = 'Text' | 'Keyword' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList';

/** What the workflow upserts so the Web UI can filter migrations. */
export const FERRY_SEARCH_ATTRIBUTES: Readonly<Record<string, SearchAttributeType>> = {
  FerryInstance: 'Keyword',
  FerrySource: 'Keyword',
  FerryDestination: 'Keyword',
  FerryPhase: 'Keyword',
  FerryOutcome: 'Keyword',
};

export interface DevServerOptions {
  /** Address the gRPC frontend binds (default 127.0.0.1). */
  ip?: string;
  port?: number;
  /** Web UI port, always bound on 127.0.0.1 (default 8233). */
  uiPort?: number;
  /** SQLite file for persistence; omitted = state lost when the server stops. */
  dbFile?: string;
  /** Where the server's output goes (default: next to dbFile, else in the temp dir). */
  logFile?: string;
  /** Extra search attributes, merged over FERRY_SEARCH_ATTRIBUTES. */
  searchAttributes?: Record<string, SearchAttributeType>;
  /** Path of the `temporal` CLI; found by findTemporalBinary() when omitted. */
  binary?: string;
  /** How long to wait for the server to answer (default 120 s: SQLite setup under load is slow). */
  startTimeoutMs?: number;
}

export interface DevServer {
  /** host:port of the gRPC frontend, for Connection.connect / FERRY_TEMPORAL_ADDRESS. */
  address: string;
  uiUrl: string;
  /** true if a server was already running there: stop() then leaves it alone. */
  reused: boolean;
  logFile?: string;
  pid?: number;
  stop(): Promise<void>;
}

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The `temporal` CLI: $FERRY_TEMPORAL_BIN, PATH, .tools/bin/temporal, else whatever
 * scripts/ensure-temporal.sh builds (go install, pinned version).
 */
export async function findTemporalBinary(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const explicit = env.FERRY_TEMPORAL_BIN;
  if (explicit) {
    if (isExecutable(explicit)) return explicit;
    throw new Error(`FERRY_TEMPORAL_BIN=${explicit} is not an executable file`);
  }
  for (const dir of (env.PATH ?? '').split(delimiter)) {
    if (dir && isExecutable(join(dir, 'temporal'))) return join(dir, 'temporal');
  }
  const local = join(repoRoot, '.tools', 'bin', 'temporal');
  if (isExecutable(local)) return local;
  const script = join(repoRoot, 'scripts', 'ensure-temporal.sh');
  const { stdout } = await execFileP('bash', [script], { env, maxBuffer: 16 << 20, timeout: 30 * 60_000 });
  const path = stdout.trim().split('\n').pop() ?? '';
  if (!isExecutable(path)) throw new Error(`scripts/ensure-temporal.sh gave no usable binary (${path || 'nothing'})`);
  return path;
}

function formatAddress(ip: string, port: number): string {
  return ip.includes(':') ? `[${ip}]:${port}` : `${ip}:${port}`;
}

/** Connects to `address`, or returns undefined if nothing answers as a Temporal frontend. */
async function tryConnect(address: string, timeoutMs: number): Promise<Connection | undefined> {
  let connection: Connection | undefined;
  try {
    connection = await Connection.connect({ address, connectTimeout: timeoutMs });
    // The default namespace exists once start-dev is ready for workers and clients.
    await connection.withDeadline(Date.now() + timeoutMs, () =>
      connection!.workflowService.describeNamespace({ namespace: 'default' }),
    );
    return connection;
  } catch {
    await connection?.close().catch(() => undefined);
    return undefined;
  }
}

/** true if a Temporal server answers at `address` within `timeoutMs`. */
export async function isTemporalUp(address: string, timeoutMs = 2000): Promise<boolean> {
  const c = await tryConnect(address, timeoutMs);
  await c?.close();
  return c !== undefined;
}

/** Registers the search attributes a reused server lacks (start-dev only adds them at launch). */
async function ensureSearchAttributes(connection: Connection, wanted: Record<string, SearchAttributeType>) {
  const namespace = 'default';
  const have = await connection.operatorService.listSearchAttributes({ namespace });
  const known = new Set([...Object.keys(have.customAttributes ?? {}), ...Object.keys(have.systemAttributes ?? {})]);
  const missing = Object.entries(wanted).filter(([name]) => !known.has(name));
  if (missing.length === 0) return;
  const types: Record<SearchAttributeType, number> = {
    Text: IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
    Keyword: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    Int: IndexedValueType.INDEXED_VALUE_TYPE_INT,
    Double: IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
    Bool: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
    Datetime: IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    KeywordList: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
  };
  await connection.operatorService.addSearchAttributes({
    namespace,
    searchAttributes: Object.fromEntries(missing.map(([name, type]) => [name, types[type]])),
  });
}

function tail(file: string, lines = 20): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

async function waitForExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  return new Promise((res) => {
    const t = setTimeout(() => res(false), ms);
    child.once('exit', () => {
      clearTimeout(t);
      res(true);
    });
  });
}

/** Starts (or reuses) a Temporal dev server and resolves once it answers. */
export async function startDevServer(opts: DevServerOptions = {}): Promise<DevServer> {
  const ip = opts.ip ?? '127.0.0.1';
  const port = opts.port ?? 7233;
  const uiPort = opts.uiPort ?? 8233;
  for (const [name, p] of [['port', port], ['uiPort', uiPort]] as const) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`startDevServer: ${name} ${p} is not a TCP port`);
  }
  const address = formatAddress(ip, port);
  const uiUrl = `http://127.0.0.1:${uiPort}`;
  const searchAttributes = { ...FERRY_SEARCH_ATTRIBUTES, ...opts.searchAttributes };
  for (const [name, type] of Object.entries(searchAttributes)) {
    if (!/^[A-Za-z][A-Za-z0-9_]*$/.test(name)) throw new Error(`startDevServer: search attribute name ${JSON.stringify(name)} is not an identifier`);
    if (!(type in { Text: 1, Keyword: 1, Int: 1, Double: 1, Bool: 1, Datetime: 1, KeywordList: 1 })) {
      throw new Error(`startDevServer: search attribute ${name} has unknown type ${JSON.stringify(type)}`);
    }
  }

  const existing = await tryConnect(address, 1500);
  if (existing) {
    try {
      await ensureSearchAttributes(existing, searchAttributes);
    } finally {
      await existing.close();
    }
    return { address, uiUrl, reused: true, stop: async () => undefined };
  }

  const binary = opts.binary ?? (await findTemporalBinary());
  const logFile = opts.logFile ?? (opts.dbFile ? `${opts.dbFile}.log` : join(tmpdir(), `ferry-temporal-${port}.log`));
  mkdirSync(dirname(logFile), { recursive: true });
  if (opts.dbFile) mkdirSync(dirname(opts.dbFile), { recursive: true });
  const args = ['server', 'start-dev', '--ip', ip, '--port', String(port), '--ui-ip', '127.0.0.1', '--ui-port', String(uiPort)];
  if (opts.dbFile) args.push('--db-filename', opts.dbFile);
  for (const [name, type] of Object.entries(searchAttributes)) args.push('--search-attribute', `${name}=${type}`);

  const fd = openSync(logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(binary, args, { stdio: ['ignore', fd, fd] });
  } finally {
    closeSync(fd);
  }
  // Never leave a server behind when this process exits without calling stop().
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));

  const stop = async () => {
    process.removeListener('exit', killOnExit);
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    if (!(await waitForExit(child, 15_000))) {
      child.kill('SIGKILL');
      await waitForExit(child, 5_000);
    }
  };

  const deadline = Date.now() + (opts.startTimeoutMs ?? 120_000);
  for (;;) {
    if (spawnError || child.exitCode !== null || child.signalCode !== null) {
      await stop();
      const why = spawnError ? spawnError.message : `exited with ${child.exitCode ?? child.signalCode}`;
      throw new Error(`temporal dev server at ${address} ${why}; last lines of ${logFile}:\n${tail(logFile)}`);
    }
    const c = await tryConnect(address, 1000);
    if (c) {
      await c.close();
      break;
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`temporal dev server at ${address} did not answer in time; last lines of ${logFile}:\n${tail(logFile)}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return { address, uiUrl, reused: false, logFile, pid: child.pid, stop };
}
