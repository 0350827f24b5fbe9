import { setTimeout as sleep } from 'node:timers/promises';
import type { BackoffConfig } from './config/config.js';

/**
 * The one retry loop of outboxd: the sink's connect, the replication session, a batch and a dead
 * letter all retry through it, so they back off, log and stop the same way.
 */

/**
 * Exponential backoff with full jitter: attempt n waits a random time in [base/2, base] where
 * base = min(max, initial * 2^(n-1)). The jitter keeps a fleet of relays from reconnecting in
 * lockstep after a shared outage.
 */
export function backoffMs(attempt: number, cfg: BackoffConfig, random: () => number = Math.random): number {
  const base = Math.min(cfg.maxMs, cfg.initialMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(base / 2 + (random() * base) / 2);
}

/** A programming error (ours or a library's): retrying the same call fails the same way, forever. */
export function isProgrammingError(err: unknown): boolean {
  return err instanceof TypeError || err instanceof RangeError;
}

/**
 * The one timeout race: `p`'s value (or its rejection) if it settles within `ms`, else
 * `onTimeout()`'s. The timer is cleared either way; `p` itself is not cancelled.
 */
export async function withTimeout<T, U>(p: Promise<T>, ms: number, onTimeout: () => U): Promise<T | U> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<U>((resolve, reject) => {
    timer = setTimeout(() => {
      try {
        resolve(onTimeout());
      } catch (err) {
        reject(err);
      }
    }, ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** True if `p` settles within `ms`. */
export function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  return withTimeout(
    p.then(() => true),
    ms,
    () => false,
  );
}

/** Whether a failure is worth a log line: the first one and every 10th, so an outage does not flood the log. */
export function worthLogging(attempt: number): boolean {
  return attempt === 1 || attempt % 10 === 0;
}

export interface RetryOptions {
  backoff: BackoffConfig;
  /** Aborting ends the loop: a wait in progress ends at once and `retry` rejects with the signal's reason. */
  signal: AbortSignal;
  /** May the same call succeed if tried again? Programming errors never may, whatever this says. */
  isRetriable(err: unknown): boolean;
  /** Before each wait: count, log (see worthLogging), report. `attempt` is the one that failed. */
  onRetry?(err: unknown, attempt: number, waitMs: number): void;
  random?: () => number;
}

/**
 * Calls `fn` until it resolves, waiting with backoff between attempts. Rejects with the first
 * error that is not retriable, or with the signal's reason once aborted. `fn` gets the attempt
 * number (from 1) and `progress`, which resets the count: a call that did useful work before it
 * failed (a session that streamed for hours) starts again from the shortest wait.
 */
export async function retry<T>(fn: (attempt: number, progress: () => void) => Promise<T>, opts: RetryOptions): Promise<T> {
  let attempt = 0;
  const progress = () => {
    attempt = 0;
  };
  for (;;) {
    opts.signal.throwIfAborted();
    attempt++;
    try {
      return await fn(attempt, progress);
    } catch (err) {
      if (opts.signal.aborted) throw opts.signal.reason;
      if (isProgrammingError(err) || !opts.isRetriable(err)) throw err;
      const waitMs = backoffMs(Math.max(1, attempt), opts.backoff, opts.random);
      opts.onRetry?.(err, Math.max(1, attempt), waitMs);
      await sleep(waitMs, undefined, { signal: opts.signal }).catch(() => {
        throw opts.signal.reason;
      });
    }
  }
}
