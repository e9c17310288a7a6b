// Reads ferry.yaml (path from --config or FERRY_CONFIG), lays environment overrides on top and
// validates the result. Every error is a FerryError BadInput that names the bad key, and the
// environment variable when the value came from one.
import { readFileSync } from 'node:fs';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { FerryError, ErrorTypes } from '../shared/errors.js';
import { configFileSchema, type FerryConfig, type NodeConfig } from './schema.js';

/** Environment variable -> config key it overrides. */
export const ENV_OVERRIDES: Readonly<Record<string, readonly string[]>> = {
  FERRY_TEMPORAL_ADDRESS: ['temporal', 'address'],
  FERRY_TEMPORAL_NAMESPACE: ['temporal', 'namespace'],
  FERRY_TEMPORAL_TLS_SERVER_NAME: ['temporal', 'tls', 'serverName'],
  FERRY_TEMPORAL_TLS_CA: ['temporal', 'tls', 'caFile'],
  FERRY_TEMPORAL_TLS_CERT: ['temporal', 'tls', 'certFile'],
  FERRY_TEMPORAL_TLS_KEY: ['temporal', 'tls', 'keyFile'],
  FERRY_INVENTORY: ['inventory', 'path'],
  FERRY_NODE: ['node', 'name'],
  FERRY_DATA_ADDRESS: ['node', 'dataAddress'],
  FERRY_STATE_DIR: ['node', 'stateDir'],
  FERRY_HYPERVISOR: ['node', 'hypervisor'],
  FERRY_CODEC: ['defaults', 'codec'],
  FERRY_CHUNK_SIZE: ['defaults', 'chunkSize'],
  FERRY_BANDWIDTH: ['defaults', 'bandwidth'],
  FERRY_DOWNTIME: ['defaults', 'downtime'],
  FERRY_MAX_ROUNDS: ['defaults', 'maxRounds'],
  FERRY_LOG_LEVEL: ['log', 'level'],
  FERRY_METRICS_ADDRESS: ['metrics', 'address'],
};

export interface LoadConfigOptions {
  /** Config file path (`--config`); falls back to env.FERRY_CONFIG; none = defaults + env. */
  file?: string;
  /** Environment to read overrides from; defaults to process.env. */
  env?: Record<string, string | undefined>;
  /** `ferry worker --node NAME`: overrides node.name (and FERRY_NODE) before validation. */
  nodeName?: string;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function bad(message: string, details?: unknown): FerryError {
  return new FerryError(ErrorTypes.BadInput, message, details);
}

function readYaml(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw bad(`config ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    const where = err instanceof YAMLParseError && err.linePos ? ` at line ${err.linePos[0].line}` : '';
    throw bad(`config ${file}: not valid YAML${where}: ${(err as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) return {};
  if (!isPlainObject(doc)) throw bad(`config ${file}: the top level must be a mapping of sections`);
  return doc;
}

/** Loads, overrides and validates the configuration. Throws FerryError BadInput on any problem. */
export function loadConfig(opts: LoadConfigOptions = {}): FerryConfig {
  const env = opts.env ?? process.env;
  const file = opts.file ?? (env.FERRY_CONFIG || undefined);
  const raw = file ? readYaml(file) : {};

  const fromEnv = new Map<string, string>();
  for (const [name, path] of Object.entries(ENV_OVERRIDES)) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    let target: Record<string, unknown> = raw;
    for (const key of path.slice(0, -1)) {
      const next = target[key];
      if (next === undefined || next === null) target[key] = {};
      else if (!isPlainObject(next)) throw bad(`${name}: cannot override ${path.join('.')}: ${key} in the config file is not a mapping`);
      target = target[key] as Record<string, unknown>;
    }
    const dotted = path.join('.');
    // Kept as text: the schema parses numbers out of strings where a key takes one (maxRounds).
    target[path[path.length - 1]!] = value;
    fromEnv.set(dotted, name);
  }

  if (opts.nodeName !== undefined) {
    if (raw.node === undefined || raw.node === null) raw.node = {};
    if (!isPlainObject(raw.node)) throw bad(`--node: cannot override node.name: node in the config file is not a mapping`);
    raw.node.name = opts.nodeName;
    fromEnv.set('node.name', '--node');
  }

  const parsed = configFileSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => {
      let key = issue.path.map(String).join('.');
      let message = issue.message;
      if (issue.code === 'unrecognized_keys') {
        const keys = issue.keys.map((k) => (key ? `${key}.${k}` : k));
        return `${keys.join(', ')}: unknown key${keys.length > 1 ? 's' : ''}`;
      }
      if (issue.code === 'invalid_type' && issue.input === undefined) message = 'is required';
      const envName = fromEnv.get(key);
      if (!key) key = '(top level)';
      return envName ? `${key} (from ${envName}): ${message}` : `${key}: ${message}`;
    });
    const where = file ? `config ${file}` : 'config';
    throw bad(`${where}: ${problems.join('; ')}`, { problems });
  }
  return file ? { ...parsed.data, file } : parsed.data;
}

/** The node section a node worker cannot run without, or a BadInput saying how to give it. */
export function requireNodeConfig(cfg: FerryConfig): NodeConfig {
  if (!cfg.node) {
    throw bad('config: a node worker needs node.name and node.dataAddress (FERRY_NODE or --node, FERRY_DATA_ADDRESS)');
  }
  return cfg.node;
}
