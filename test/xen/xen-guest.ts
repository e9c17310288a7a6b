// Helpers for the Xen lab tests: the lab guest's request protocol, asked from dom0 (the guest sits
// on dom0's xenbr0 at 10.0.2.15, unreachable from the machine directly).
import type { Executor } from '../../src/drivers/xen/executor.js';
import { parseStat, type GuestStat } from '../../src/labs/guest-client.js';

export async function guestStat(dom0: Executor): Promise<GuestStat> {
  const r = await dom0.run('busybox', ['nc', '-w', '3', '10.0.2.15', '7000'], { input: 'stat\n', timeoutMs: 10_000 });
  return parseStat(r.stdout.trim());
}

/** Polls until the guest answers (boot under TCG takes a while). */
export async function waitGuest(dom0: Executor, ms: number): Promise<GuestStat> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      return await guestStat(dom0);
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`guest did not answer within ${ms} ms: ${String(last)}`);
    await new Promise((r) => setTimeout(r, 2000));
  }
}
