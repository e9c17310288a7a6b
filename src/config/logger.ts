// Structured JSON logs (pino) on stderr, so a command's stdout stays for its result. Written
// synchronously: a worker that crashes must not lose its last lines.
import { pino, type Logger, type LevelWithSilent } from 'pino';

let rootLevel: LevelWithSilent = (process.env.FERRY_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info';
let root: Logger | undefined;

function getRoot(): Logger {
  root ??= pino({ level: rootLevel, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
  return root;
}

/** Sets the level of every logger made so far and from now on (call it after loadConfig). */
export function setLogLevel(level: LevelWithSilent): void {
  rootLevel = level;
  if (root) root.level = level;
}

/** A child logger whose lines carry `name`, e.g. createLogger('inventory'). */
export function createLogger(name: string, bindings: Record<string, unknown> = {}): Logger {
  return getRoot().child({ name, ...bindings });
}

export type { Logger };
