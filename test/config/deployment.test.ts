// No Docker engine here: check that docker-compose.yml and the Dockerfile parse and hang together
// (services, images, published ports on loopback, the controller command and its settings).
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { ENV_OVERRIDES } from '../../src/config/index.js';
import { FERRY_SEARCH_ATTRIBUTES } from '../../src/labs/temporal-dev.js';

const root = fileURLToPath(new URL('../../', import.meta.url));

interface Service {
  image?: string;
  build?: unknown;
  command?: string[] | string;
  environment?: Record<string, string>;
  ports?: string[];
  depends_on?: unknown;
}

describe('deployment files', () => {
  const compose = parse(readFileSync(`${root}docker-compose.yml`, 'utf8')) as { services: Record<string, Service>; volumes: Record<string, unknown> };
  const s = compose.services;

  it('docker-compose.yml has Temporal on PostgreSQL, its UI and the Ferry controller', () => {
    expect(Object.keys(s).sort()).toEqual(['ferry-controller', 'postgresql', 'temporal', 'temporal-setup', 'temporal-ui']);
    expect(s.temporal!.image).toMatch(/^temporalio\/auto-setup:/);
    expect(s.temporal!.environment).toMatchObject({ DB: 'postgres12', POSTGRES_SEEDS: 'postgresql' });
    expect(s['temporal-ui']!.image).toMatch(/^temporalio\/ui:/);
    expect(s['temporal-ui']!.ports).toEqual(['127.0.0.1:8233:8080']);
    // nothing is published beyond loopback
    for (const svc of Object.values(s)) for (const p of svc.ports ?? []) expect(p).toMatch(/^127\.0\.0\.1:/);
    // the setup job registers exactly the search attributes the dev server gets
    const setup = JSON.stringify(s['temporal-setup']!.command);
    for (const name of Object.keys(FERRY_SEARCH_ATTRIBUTES)) expect(setup).toContain(name);
  });

  it('the controller runs the built CLI with settings Ferry understands', () => {
    const c = s['ferry-controller']!;
    expect(c.build).toBe('.');
    expect(c.command).toEqual(['node', 'dist/cli/ferry.js', 'worker', '--controller']);
    for (const key of Object.keys(c.environment ?? {})) expect(Object.keys(ENV_OVERRIDES)).toContain(key);
    expect(c.environment!.FERRY_TEMPORAL_ADDRESS).toBe('temporal:7233');
    expect(existsSync(`${root}src/cli/ferry.ts`)).toBe(true);
    const dockerfile = readFileSync(`${root}Dockerfile`, 'utf8');
    expect(dockerfile).toMatch(/^FROM node:20/m);
    expect(dockerfile).toMatch(/RUN npm ci/);
    expect(dockerfile).toContain('CMD ["node", "dist/cli/ferry.js", "worker", "--controller"]');
  });
});
