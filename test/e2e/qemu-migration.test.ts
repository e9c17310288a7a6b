// End to end, all real: a Temporal dev server, the controller worker, a node worker inside each of
// two network namespaces, QEMU guests (TCG) that count in memory, write records to their disks and
// answer requests while Ferry moves them.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { WorkflowFailedError } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { readFile } from 'node:fs/promises';
import { mkdirSync } from 'node:fs';
import type { MigrationResult } from '../../src/shared/messages.js';
import { launchBrowser, screenshotWorkflow, startFromUi } from './temporal-ui.js';
import { LAB_MAX_ROUNDS, startQemuLab, type Lab } from '../../src/labs/qemu-lab.js';
import { startProber, quiesce } from '../../src/labs/guest-client.js';
import { cancelUpdate, proceedSignal } from '../../src/shared/messages.js';
import { totalDiskBytes, type InstanceSpec } from '../../src/shared/instance.js';
import { workflowsPath } from '../../src/workers/workflows-path.js';
import { waitForPollers } from '../../src/labs/lab-common.js';
import { guestAnswersOn, qemuProcessesOf, readRecords, result, startMigration, waitFor, waitForGuest } from './helpers.js';

const MiB = 1024 * 1024;
const repoRoot = new URL('../..', import.meta.url).pathname;
let lab: Lab;

beforeAll(async () => {
  lab = await startQemuLab({ dir: '/var/tmp/ferry-e2e', temporalPort: 7243, log: (l) => console.log(`[lab] ${l}`) });
  await lab.startWorkers();
});

// Guests cost CPU (TCG) and inventory capacity: each test's guests go when the test ends.
const booted: InstanceSpec[] = [];
afterEach(async () => {
  for (const spec of booted.splice(0)) await lab.destroyGuest(spec);
});

afterAll(async () => {
  await lab?.close();
});

/** The Ferry error type of a failed workflow: thrown by an activity (nested) or by the workflow. */
function failureType(err: unknown): string | undefined {
  expect(err).toBeInstanceOf(WorkflowFailedError);
  const cause = (err as WorkflowFailedError).cause as { type?: string; cause?: { type?: string } } | undefined;
  return cause?.cause?.type ?? cause?.type;
}

/**
 * Runs the real `ferry` CLI against the lab's config; never throws. Asynchronous on purpose: the
 * lab's TCP forwarder to Temporal lives in this process's event loop.
 */
function ferryCli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/ferry.ts', ...args],
      { encoding: 'utf8', env: { ...process.env, FERRY_CONFIG: lab.configPath, FERRY_TEMPORAL_ADDRESS: lab.temporal.address } },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

/** Sum of a Prometheus metric's samples (every label set) in an exposition text. */
function metricValue(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = new RegExp(`^${name}(?:\\{[^}]*\\})? ([0-9.e+-]+)$`).exec(line);
    if (m) sum += Number(m[1]);
  }
  return sum;
}

function countsOf(node: string) {
  return lab.inventory.freeCapacity(node);
}

async function boot(id: string, extra: Partial<Parameters<Lab['bootGuest']>[0]> = {}): Promise<InstanceSpec> {
  const spec = await lab.bootGuest({ id, node: 'node-a', memoryMiB: 128, diskMiB: 64, rate: 5, ...extra });
  booted.push(spec);
  await waitForGuest(lab, spec, 'node-a');
  return spec;
}

/** The guest still runs on node-a only, untouched, and node-b holds nothing of it. */
async function expectStillOnSource(spec: InstanceSpec, before: { a: unknown; b: unknown }) {
  const s1 = await guestAnswersOn(lab, spec, 'node-a');
  expect(s1, 'guest answers on node-a').not.toBeNull();
  await new Promise((r) => setTimeout(r, 1500));
  const s2 = await guestAnswersOn(lab, spec, 'node-a');
  expect(s2!.counter, 'the counter keeps counting on node-a').toBeGreaterThan(s1!.counter);
  expect(await guestAnswersOn(lab, spec, 'node-b'), 'nothing answers on node-b').toBeNull();
  expect(lab.inventory.getInstance(spec.id).host).toBe('node-a');
  expect(countsOf('node-a')).toEqual(before.a);
  expect(countsOf('node-b')).toEqual(before.b);
  expect(lab.inventory.listReservations({ live: true })).toEqual([]);
  expect(lab.inventory.checkConsistency()).toEqual([]);
  expect(existsSync(`${lab.nodeStateDir('node-b')}/disks/${spec.id}.raw`), 'no destination disk left').toBe(false);
  expect(qemuProcessesOf(spec.id), 'exactly one QEMU runs the instance').toBe(1);
}

describe('a live migration on the QEMU lab', () => {
  let historyJson: unknown;

  it('moves a guest that is writing: counter continues, records kept, disks identical, inventory right', async () => {
    const spec = await boot('i-e2e-ok');
    const beforeA = countsOf('node-a');
    const beforeB = countsOf('node-b');
    const prober = startProber(lab.serviceAddresses(spec), 200);
    const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { verify: true } });
    const r = await result(handle);
    const probe = await prober.stop();

    expect(r.outcome).toBe('migrated');
    expect(r.diskIdentical, 'SHA-256 of both disks while both sides were paused').toBe(true);
    expect(probe.counterReset, 'the in-memory counter never went back').toBe(false);
    expect(probe.hosts).toContain('10.213.2.2');

    // Runs on node-b only.
    const after = await waitForGuest(lab, spec, 'node-b', 30_000);
    expect(after.counter).toBeGreaterThanOrEqual(probe.lastCounter ?? 0);
    expect(await guestAnswersOn(lab, spec, 'node-a')).toBeNull();
    expect(qemuProcessesOf(spec.id)).toBe(1);

    // Every record the guest called durable is on node-b's disk.
    const lastSeq = await quiesce('10.213.2.2', spec.servicePort!);
    const destDisk = `${lab.nodeStateDir('node-b')}/disks/${spec.id}.raw`;
    const records = await readRecords(destDisk, Math.floor(64 * 0.75));
    const missing = [];
    for (let s = 1; s <= lastSeq; s++) if (!records.has(s)) missing.push(s);
    expect(lastSeq).toBeGreaterThan(0);
    expect(missing, 'acknowledged records missing on the destination').toEqual([]);

    // Inventory: host is node-b, capacity moved, nothing reserved, nothing left on node-a.
    expect(lab.inventory.getInstance(spec.id).host).toBe('node-b');
    // The recorded disk is the destination's file now, the rest of it as it was.
    expect(lab.inventory.getInstance(spec.id).spec.disks).toEqual([{ ...spec.disks[0]!, path: destDisk }]);
    expect(countsOf('node-a').memoryMiB).toBe(beforeA.memoryMiB + 128);
    expect(countsOf('node-b').memoryMiB).toBe(beforeB.memoryMiB - 128 + 0);
    expect(countsOf('node-b').diskBytes).toBe(beforeB.diskBytes - 64 * MiB + 0);
    expect(lab.inventory.listReservations({ live: true })).toEqual([]);
    expect(lab.inventory.checkConsistency()).toEqual([]);
    expect(existsSync(spec.disks[0]!.path), 'source disk removed').toBe(false);

    const status = await ferryCli(['status', spec.id, '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(JSON.parse(status.stdout), status.stdout).toMatchObject({ status: 'COMPLETED', result: { outcome: 'migrated', destination: 'node-b' } });
    // The controller resolved the options: the caller's verify, the lab config's maxRounds, built-in downtime.
    expect(r.options).toMatchObject({ verifyDisk: true, maxRounds: LAB_MAX_ROUNDS, downtimeMs: 2000 });
    expect(r.pause!.totalMs).toBe(r.downtimeMs);
    expect(r.pause!.finalSyncMs + r.pause!.switchoverMs + r.pause!.resumeMs).toBeLessThanOrEqual(r.pause!.totalMs);
    historyJson = await handle.fetchHistory();

    // The whole story, as text, JSON and a picture.
    const svgFile = join(lab.dir, 'i-e2e-ok.svg');
    const shown = await ferryCli(['show', spec.id, '--svg', svgFile]);
    expect(shown.code, shown.stderr).toBe(0);
    for (const part of ['bulk-copy', 'final-sync', 'pause']) expect(shown.stdout).toContain(part);
    const svg = await readFile(svgFile, 'utf8');
    expect(svg).toMatch(/^<svg[\s\S]*<\/svg>\s*$/);
    for (const phase of ['bulk-copy', 'dirty-rounds', 'memory', 'pause']) expect(svg, `the picture names ${phase}`).toContain(phase);
    const story = JSON.parse((await ferryCli(['show', spec.id, '--json'])).stdout);
    expect(story.pause.totalMs).toBe(r.downtimeMs);
  });

  it('runs a migration started from the Temporal UI like a CLI one, and the CLI finds it by instance', async () => {
    const spec = await boot('i-e2e-ui');
    const browser = await launchBrowser();
    let workflowId = '';
    try {
      // The README's recipe: the form's own Workflow ID, queue, type, and this input.
      workflowId = await startFromUi(browser, lab.temporal.uiUrl, { instanceId: spec.id, destination: 'node-b' });
      expect(workflowId).not.toBe(`migrate-${spec.id}`);
      // `ferry status INSTANCE` finds the run whatever its workflow id (search attributes from its first moment).
      let status: { workflowId?: string } = {};
      for (let i = 0; i < 60 && status.workflowId !== workflowId; i++) {
        const r = await ferryCli(['status', spec.id, '--json']);
        if (r.code === 0) status = JSON.parse(r.stdout);
        else await new Promise((res) => setTimeout(res, 1000));
      }
      expect(status.workflowId, 'ferry status found the UI-started run').toBe(workflowId);
      mkdirSync(join(repoRoot, '.cache'), { recursive: true });
      await screenshotWorkflow(browser, lab.temporal.uiUrl, workflowId, join(repoRoot, '.cache', 'ui-migration.png'));
      const r = (await lab.client.workflow.getHandle(workflowId).result()) as MigrationResult;
      expect(r.outcome).toBe('migrated');
      // The config file's defaults applied, as for a CLI start.
      expect(r.options).toMatchObject({ maxRounds: LAB_MAX_ROUNDS, downtimeMs: 2000, codec: 'lzo' });
    } finally {
      await browser.close();
    }
    await waitForGuest(lab, spec, 'node-b', 30_000);
    expect(await guestAnswersOn(lab, spec, 'node-a')).toBeNull();
    expect(lab.inventory.getInstance(spec.id).host).toBe('node-b');
    const shown = JSON.parse((await ferryCli(['show', spec.id, '--json'])).stdout);
    expect(shown.workflowId).toBe(workflowId);
    const listed = JSON.parse((await ferryCli(['list', '--instance', spec.id, '--outcome', 'migrated', '--json'])).stdout);
    expect(listed.map((x: { workflowId: string }) => x.workflowId)).toEqual([workflowId]);
  });

  it('replays the recorded history against the current workflow code', async () => {
    expect(historyJson).toBeDefined();
    // Throws DeterminismViolationError if the workflow code no longer produces this history.
    await Worker.runReplayHistory({ workflowsPath: workflowsPath() }, historyJson);
    // The operator's way: `ferry history` exports it, `ferry replay` checks the code against it.
    const file = join(lab.dir, 'history-i-e2e-ok.json');
    const exported = await ferryCli(['history', 'i-e2e-ok', '-o', file]);
    expect(exported.code, exported.stderr).toBe(0);
    const replayed = await ferryCli(['replay', file]);
    expect(replayed.code, replayed.stderr).toBe(0);
    expect(replayed.stdout).toMatch(/deterministic/);
  });

  it('refuses, through the CLI, what the controller would refuse, before anything starts', async () => {
    for (const [args, code, text] of [
      [['migrate', 'i-nobody', '--to', 'node-b', '--detach'], 3, /UnknownInstance.*unknown instance i-nobody/],
      [['migrate', 'i-e2e-ok', '--to', 'node-b', '--detach', '--chunk-size', '0'], 2, /--chunk-size: must be a multiple of 4KiB/],
      [['migrate', 'i-e2e-ok', '--to', 'node-b', '--detach', '--downtime', '999s'], 2, /--downtime: must be at most 20s/],
    ] as const) {
      const r = await ferryCli([...args]);
      expect(r.code, r.stderr).toBe(code);
      expect(r.stderr).toMatch(text);
      expect(r.stderr, 'no stack trace').not.toMatch(/\n\s+at /);
    }
    const listed = JSON.parse((await ferryCli(['list', '--instance', 'i-nobody', '--json'])).stdout);
    expect(listed, 'nothing started for an unknown instance').toEqual([]);
    const unknownHistory = await ferryCli(['history', 'i-never-migrated']);
    expect(unknownHistory.code).toBe(3);
    expect(unknownHistory.stderr).toMatch(/no migration i-never-migrated/);
  });

  it('closes the migration log when a node worker never answers', async () => {
    const spec = await boot('i-e2e-noworker');
    const before = { a: countsOf('node-a'), b: countsOf('node-b') };
    await lab.stopWorker('node-b');
    try {
      const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b' });
      const err = await handle.result().catch((e) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      const rows = lab.inventory.listMigrations({ instanceId: spec.id });
      expect(rows).toHaveLength(1);
      expect(rows[0]!.outcome, 'the row is closed').not.toBeNull();
      const status = await ferryCli(['status', spec.id, '--json']);
      expect(JSON.parse(status.stdout).error, 'status says why').toMatch(/ferry-node-node-b|timed out|Timeout|schedule/i);
    } finally {
      lab.startNodeWorker('node-b');
      await waitForPollers(lab.client, ['ferry-node-node-b']);
    }
    await expectStillOnSource(spec, before);
  });

  it('refuses a bad destination before any side effect', async () => {
    const spec = await boot('i-e2e-bad');
    const before = { a: countsOf('node-a'), b: countsOf('node-b') };
    for (const [destination, type] of [
      ['node-zz', 'UnknownNode'],
      ['node-a', 'InvalidDestination'],
      ['../etc', 'BadInput'],
    ] as const) {
      const handle = await startMigration(lab, { instanceId: spec.id, destination });
      const err = await handle.result().catch((e) => e);
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect(failureType(err), String(err?.cause?.cause?.message ?? err)).toBe(type);
    }
    const unknown = await startMigration(lab, { instanceId: 'i-nobody', destination: 'node-b' });
    const err = await unknown.result().catch((e) => e);
    expect(failureType(err)).toBe('UnknownInstance');
    await expectStillOnSource(spec, before);
  });

  // Each phase before the point of no return: hold right after it, cancel, and check that
  // everything is as before.
  for (const phase of ['reserve', 'prepare', 'track', 'bulk-copy', 'dirty-rounds', 'memory'] as const) {
    it(`rolls back when cancelled after ${phase}`, async () => {
      const spec = await boot(`i-e2e-cancel-${phase}`);
      const before = { a: countsOf('node-a'), b: countsOf('node-b') };
      const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { holdAfter: [phase] } });
      await waitFor(handle, (p) => p.heldAfter === phase);
      await handle.executeUpdate(cancelUpdate, { args: [`test cancels after ${phase}`] });
      const r = await result(handle);
      expect(r.outcome).toBe('rolled-back');
      expect(r.reason).toContain(`after ${phase}`);
      await expectStillOnSource(spec, before);
    });
  }

  it('rolls back when cancelled in the middle of the bulk copy', async () => {
    const spec = await boot('i-e2e-cancel-mid', { randomMiB: 32 });
    const before = { a: countsOf('node-a'), b: countsOf('node-b') };
    // 2 MiB/s: the 64 MiB disk takes long enough to cancel mid-stream.
    const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { bandwidth: '2MiB/s', codec: 'none' } });
    await waitFor(handle, (p) => p.phase === 'bulk-copy' && p.bytesDone > 4 * MiB);
    // The source node worker's Prometheus endpoint counts the bytes as they go.
    const sent = async () => metricValue(await (await fetch(lab.metricsUrl('node-a'))).text(), 'ferry_disk_bytes_total');
    const first = await sent();
    await new Promise((r) => setTimeout(r, 3000));
    const second = await sent();
    expect(first).toBeGreaterThan(0);
    expect(second, 'ferry_disk_bytes_total grows during the bulk copy').toBeGreaterThan(first);
    // Live progress, disk apart: a rate and an ETA while it copies.
    const live = JSON.parse((await ferryCli(['status', spec.id, '--json'])).stdout);
    expect(live.progress.disk).toMatchObject({ stream: 'bulk' });
    expect(live.progress.disk.rateBytesPerSec).toBeGreaterThan(0);

    await handle.executeUpdate(cancelUpdate, { args: ['test cancels mid-copy'] });
    const r = await result(handle);
    expect(r.outcome).toBe('rolled-back');
    await expectStillOnSource(spec, before);

    // A rolled-back run: listed with its reason, its history exported and replayed.
    const listed = JSON.parse((await ferryCli(['list', '--outcome', 'rolled-back', '--instance', spec.id, '--json'])).stdout);
    expect(listed).toHaveLength(1);
    expect(listed[0].reason).toBe('test cancels mid-copy');
    const status = JSON.parse((await ferryCli(['status', spec.id, '--json'])).stdout);
    expect(status.error).toBe('test cancels mid-copy');
    const file = join(lab.dir, 'history-i-e2e-cancel-mid.json');
    expect((await ferryCli(['history', spec.id, '-o', file])).code).toBe(0);
    const replayed = await ferryCli(['replay', file]);
    expect(replayed.code, replayed.stderr).toBe(0);
  });

  it('refuses to cancel after the point of no return, and finishes', async () => {
    const spec = await boot('i-e2e-late-cancel');
    const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { holdAfter: ['memory'] } });
    await waitFor(handle, (p) => p.heldAfter === 'memory');
    await handle.signal(proceedSignal, 'memory');
    await waitFor(handle, (p) => p.pastPointOfNoReturn);
    // Through the CLI, as an operator would: refused with exit code 5 and the reason.
    const cancel = await ferryCli(['cancel', spec.id, '--json']);
    expect(cancel.code, cancel.stderr + cancel.stdout).toBe(5);
    expect(JSON.parse(cancel.stdout).reason).toMatch(/too late to cancel|nothing to cancel/);
    const r = await result(handle);
    expect(r.outcome).toBe('migrated');
    await waitForGuest(lab, spec, 'node-b', 30_000);
    expect(await guestAnswersOn(lab, spec, 'node-a')).toBeNull();
  });

  it('finishes when the source node worker is killed and restarted mid-copy', async () => {
    // 32 MiB of random data: at 2 MiB/s the bulk copy lasts long enough to kill a worker in it.
    const spec = await boot('i-e2e-crash', { randomMiB: 32 });
    const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { bandwidth: '2MiB/s', codec: 'none', verify: true } });
    await waitFor(handle, (p) => p.phase === 'bulk-copy' && p.bytesDone > 8 * MiB);
    await lab.killWorker('node-a');
    await new Promise((r) => setTimeout(r, 2000));
    lab.startNodeWorker('node-a');
    const r = await result(handle);
    expect(r.outcome).toBe('migrated');
    expect(r.diskIdentical).toBe(true);
    // Resumed, not restarted: the bulk stream did not send the whole disk twice.
    expect(r.diskWireBytes).toBeLessThan(2 * totalDiskBytes(spec));
    await waitForGuest(lab, spec, 'node-b', 30_000);
    expect(await guestAnswersOn(lab, spec, 'node-a')).toBeNull();
    expect(lab.inventory.getInstance(spec.id).host).toBe('node-b');
    expect(lab.inventory.checkConsistency()).toEqual([]);
  });

  it('aborts cleanly when the guest writes faster than the link carries, and the guest keeps running on the source', async () => {
    // 512 KiB of random data per write over a 1 MiB/s cap: the dirty rounds cannot converge.
    const spec = await boot('i-e2e-hot', { burstKiB: 512, spanMiB: 8 });
    const before = { a: countsOf('node-a'), b: countsOf('node-b') };
    const handle = await startMigration(lab, { instanceId: spec.id, destination: 'node-b', options: { bandwidth: '1MiB/s', maxRounds: 3, downtime: '500ms' } });
    const err = await handle.result().catch((e) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    expect(failureType(err)).toBe('WontConverge');
    await expectStillOnSource(spec, before);
  });
});
