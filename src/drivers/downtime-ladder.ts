// The memory downtime limit as a ladder, the way Proxmox and Nova set QEMU's: start low, so a
// guest that converges easily pauses only for what it must send, and raise the limit (doubling,
// up to the budget) each time pre-copy stops making progress for a few passes. A fixed limit at
// the budget would pause every guest for as long as the busiest one needs.

/** Where the ladder starts: what a quiet guest's last pass needs on a LAN. */
export const LADDER_START_MS = 50;
/** Passes without a 10 % drop in the memory left before the limit rises. */
export const LADDER_STALL_PASSES = 2;

export class DowntimeLadder {
  private limit: number;
  private best = Infinity;
  private bestAt = 0;
  private lastPass = -1;

  constructor(private readonly budgetMs: number, startMs = LADDER_START_MS) {
    this.limit = Math.max(1, Math.min(startMs, budgetMs));
  }

  /** The limit now, in ms. */
  get currentMs(): number {
    return this.limit;
  }

  /** Whether the limit can still rise. */
  get atBudget(): boolean {
    return this.limit >= this.budgetMs;
  }

  /**
   * One observation of pre-copy (QEMU's dirty-sync-count and memory left). Returns the new limit
   * when it rises, otherwise undefined.
   */
  observe(pass: number, remainingBytes: number): number | undefined {
    if (pass <= this.lastPass) return undefined;
    this.lastPass = pass;
    if (remainingBytes < this.best * 0.9) {
      this.best = remainingBytes;
      this.bestAt = pass;
      return undefined;
    }
    if (pass - this.bestAt < LADDER_STALL_PASSES || this.atBudget) return undefined;
    this.limit = Math.min(this.budgetMs, this.limit * 2);
    // A fresh start for the next rung: it gets its own passes to show progress.
    this.best = remainingBytes;
    this.bestAt = pass;
    return this.limit;
  }
}
