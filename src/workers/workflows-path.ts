import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/** The workflow entry next to this file: `.js` once built, `.ts` when run from source (tests). */
export function workflowsPath(): string {
  const js = fileURLToPath(new URL('../workflows/index.js', import.meta.url));
  if (existsSync(js)) return js;
  return fileURLToPath(new URL('../workflows/index.ts', import.meta.url));
}
