// Shared by the end-to-end tests: start a migration through Temporal as the CLI does, wait for a
// phase, read the guest's records off a disk image.
import { open } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { CONTROL_TASK_QUEUE, MIGRATE_WORKFLOW_TYPE, migrationWorkflowId, type Phase } from '../../src/shared/names.js';
import { progressQuery, type MigrateInput, type MigrationProgress, type MigrationResult } from '../../src/shared/messages.js';
import { SA_DESTINATION, SA_INSTANCE } from '../../src/shared/search-attributes.js';
import type { Lab } from '../../src/labs/qemu-lab.js';
import type { InstanceSpec } from '../../src/shared/instance.js';
import { stat, type GuestStat } from '../../src/labs/guest-client.js';

export async function startMigration(lab: { client: Client }, input: MigrateInput): Promise<WorkflowHandle> {
  return lab.client.workflow.start(MIGRATE_WORKFLOW_TYPE, {
    taskQueue: CONTROL_TASK_QUEUE,
    workflowId: migrationWorkflowId(input.instanceId),
    args: [input],
    typedSearchAttributes: [
      { key: SA_INSTANCE, value: input.instanceId },
      { key: SA_DESTINATION, value: input.destination },
    ],
  });
}

export async function waitFor(handle: WorkflowHandle, pred: (p: MigrationProgress) => boolean, timeoutMs = 300_000): Promise<MigrationProgress> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const p = await handle.query(progressQuery);
    if (pred(p)) return p;
    if (Date.now() > deadline) throw new Error(`timed out waiting; last progress ${JSON.stringify(p)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function result(handle: WorkflowHandle): Promise<MigrationResult> {
  return (await handle.result()) as MigrationResult;
}

export function phaseOf(p: MigrationProgress): Phase {
  return p.phase;
}

/** Asks the guest on `node` until it answers (it may still be booting). */
export async function waitForGuest(lab: Lab, spec: InstanceSpec, node: string, timeoutMs = 120_000): Promise<GuestStat> {
  const addr = lab.serviceAddresses(spec).find((a) => a.node === node)!;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await stat(addr.host, addr.port);
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`guest ${spec.id} never answered on ${node}: ${String(err)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

export async function guestAnswersOn(lab: Lab, spec: InstanceSpec, node: string): Promise<GuestStat | null> {
  const addr = lab.serviceAddresses(spec).find((a) => a.node === node)!;
  try {
    return await stat(addr.host, addr.port);
  } catch {
    return null;
  }
}

/** Sequence numbers of the guest's records found on a disk image (4 KiB blocks from `recbaseMiB`). */
export async function readRecords(diskPath: string, recbaseMiB: number): Promise<Set<number>> {
  const fh = await open(diskPath, 'r');
  const seen = new Set<number>();
  try {
    const { size } = await fh.stat();
    const start = recbaseMiB * 1024 * 1024;
    const buf = Buffer.alloc(size - start);
    await fh.read(buf, 0, buf.length, start);
    for (let off = 0; off + 4096 <= buf.length; off += 4096) {
      const m = /^ferry-record seq=(\d+)/.exec(buf.subarray(off, off + 64).toString('latin1'));
      if (m && Number(m[1]) === off / 4096) seen.add(Number(m[1]));
    }
  } finally {
    await fh.close();
  }
  return seen;
}

/** QEMU processes of an instance on this machine (any namespace): the instance id is in their command line. */
export function qemuProcessesOf(instanceId: string): number {
  try {
    const out = execFileSync('pgrep', ['-f', `qemu-system-x86_64.*${instanceId}[/.]`], { encoding: 'utf8' });
    return out.split('\n').filter(Boolean).length;
  } catch {
    return 0;
  }
}

export { existsSync };

/**
 * Runs a long setup as named steps, logging each with its elapsed time, and fails with the name of
 * the step it is stuck in once `limitMs` passes: a setup that hangs in CI then says where, instead
 * of a bare hook timeout.
 */
export async function timedSetup<T>(what: string, limitMs: number, fn: (step: (name: string) => void) => Promise<T>): Promise<T> {
  const t0 = Date.now();
  let current = 'start';
  const step = (name: string) => {
    current = name;
    console.log(`[${what} ${((Date.now() - t0) / 1000).toFixed(1)} s] ${name}`);
  };
  let timer: NodeJS.Timeout | undefined;
  const stuck = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still at "${current}" after ${limitMs / 1000} s`)), limitMs);
  });
  try {
    return await Promise.race([fn(step), stuck]);
  } finally {
    clearTimeout(timer);
  }
}
