import type { BackoffConfig } from '../config/schema.js';

/**
 * Exponential backoff with full jitter: attempt n waits a random time in
 * [base/2, base] where base = min(max, initial * 2^(n-1)). The jitter keeps a fleet of relays
 * from reconnecting in lockstep after a shared outage.
 */
export function backoffMs(attempt: number, cfg: BackoffConfig, random: () => number = Math.random): number {
  const base = Math.min(cfg.maxMs, cfg.initialMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(base / 2 + (random() * base) / 2);
}

/** A sleep that `wake()` can cut short (used so that a stop does not wait out a backoff). */
export class Sleeper {
  private timers = new Set<{ timer: NodeJS.Timeout; resolve: () => void }>();

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const entry = {
        timer: setTimeout(() => {
          this.timers.delete(entry);
          resolve();
        }, ms),
        resolve,
      };
      this.timers.add(entry);
    });
  }

  wakeAll(): void {
    for (const e of this.timers) {
      clearTimeout(e.timer);
      e.resolve();
    }
    this.timers.clear();
  }
}
