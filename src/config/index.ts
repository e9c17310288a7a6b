// Public face of the configuration: import from here.
export { loadConfig, requireNodeConfig, ENV_OVERRIDES } from './load.js';
export type { LoadConfigOptions } from './load.js';
export { configFileSchema, MAX_DOWNTIME_MS } from './schema.js';
export type { FerryConfig, NodeConfig, LogLevel } from './schema.js';
export { parseSize, parseDuration, parseBandwidth } from './units.js';
export { createLogger, setLogLevel } from './logger.js';
export type { Logger } from './logger.js';
