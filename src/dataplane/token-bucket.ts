// Bandwidth cap for the sender. Hand-rolled (a few lines) because it must let one request be
// larger than the burst (a 1 MiB frame under a small cap) by going into debt, and be abortable;
// `limiter`'s TokenBucket rejects requests above its bucket size.
import { setTimeout as sleep } from 'node:timers/promises';

export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  private readonly burst: number;

  /** `rate` bytes per second; `burst` bytes may go at once after an idle spell. */
  constructor(private readonly rate: number, burst?: number) {
    if (!(rate > 0)) throw new RangeError('token bucket rate must be > 0');
    this.burst = burst ?? Math.max(64 * 1024, rate / 20);
    this.tokens = this.burst;
  }

  /** Waits until `n` bytes may be sent. */
  async take(n: number, signal?: AbortSignal): Promise<void> {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    this.tokens -= n;
    if (this.tokens < 0) await sleep((-this.tokens / this.rate) * 1000, undefined, { signal });
  }
}
