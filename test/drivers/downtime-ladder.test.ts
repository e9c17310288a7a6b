// The downtime ladder: low while pre-copy makes progress, doubling (capped at the budget) when it stalls.
import { describe, expect, it } from 'vitest';
import { DowntimeLadder, LADDER_START_MS } from '../../src/drivers/downtime-ladder.js';

describe('downtime ladder', () => {
  it('stays at its start while each pass leaves clearly less memory', () => {
    const l = new DowntimeLadder(2000);
    for (const [pass, left] of [[1, 100e6], [2, 20e6], [3, 5e6], [4, 1e6]] as const) expect(l.observe(pass, left)).toBeUndefined();
    expect(l.currentMs).toBe(LADDER_START_MS);
  });

  it('doubles after two stalled passes, again after two more, and never passes the budget', () => {
    const l = new DowntimeLadder(300);
    const seen: (number | undefined)[] = [];
    for (let pass = 1; pass <= 12; pass++) seen.push(l.observe(pass, 8e6));
    expect(seen.filter((x) => x !== undefined)).toEqual([100, 200, 300]);
    expect(l.atBudget).toBe(true);
  });

  it('counts a pass once, however often it is polled, and starts no higher than a small budget', () => {
    const l = new DowntimeLadder(30);
    expect(l.currentMs).toBe(30);
    for (let i = 0; i < 10; i++) expect(l.observe(1, 5e6)).toBeUndefined();
    expect(l.observe(2, 5e6)).toBeUndefined();
  });
});
