import type { BackoffConfig } from '../config/config.js';
import { SinkError } from '../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { isProgrammingError, retry, worthLogging } from '../retry.js';
import { StallWatch } from './stall.js';

/**
 * Calls to the sink, each retried with backoff until the broker confirms (the sink rebuilt
 * between attempts), watched for stalls, counted and logged. A call rejects only with a SinkError
 * that retrying cannot fix, or with the stop signal's reason.
 */
export class Publisher {
  private readonly stall: StallWatch;
  /** Calls that failed at least once and have not yet succeeded or given up. */
  private failingCalls = 0;

  constructor(
    private readonly sink: Sink,
    private readonly backoff: BackoffConfig,
    stallTimeoutMs: number,
    private readonly events: {
      onSinkHealth(up: boolean, error?: SinkError): void;
      onStall(stalled: boolean, waitedMs: number): void;
    },
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly signal: AbortSignal,
  ) {
    this.stall = new StallWatch(stallTimeoutMs, (on, waitedMs) => events.onStall(on, waitedMs));
  }

  /** Whether a call is between a failure and its recovery (the sink is being rebuilt). */
  get failing(): boolean {
    return this.failingCalls > 0;
  }

  /**
   * Resolves once the broker confirmed every message not listed as poisoned. `before`: the end of
   * an earlier batch still at the broker (Sink.batchesInFlight); a retry waits for it, so the
   * sink is rebuilt under one batch at a time and the earlier batch is retried first.
   */
  async publish(messages: readonly OutboxMessage[], before?: Promise<void>): Promise<PublishOutcome> {
    return this.call('publish', 'unknown', { batch: messages.length }, before, async () => {
      const started = performance.now();
      const outcome = await this.sink.publish(messages);
      this.metrics.publishDuration.observe((performance.now() - started) / 1000);
      return outcome;
    });
  }

  /** Resolves once the dead-letter destination confirmed the letter. */
  async deadLetter(letter: DeadLetter): Promise<void> {
    await this.call('dead-letter publish', 'dead_letter', {}, undefined, () => this.sink.publishDeadLetter(letter));
  }

  private async call<T>(
    what: string,
    reason: string,
    context: object,
    before: Promise<void> | undefined,
    fn: () => Promise<T>,
  ): Promise<T> {
    const asError = (err: unknown) => asSinkError(err, reason, `${what} failed`);
    const prefix = reason === 'dead_letter' ? 'dead_letter_' : '';
    let failed = false;
    try {
      return await retry(
        async (attempt) => {
          if (attempt > 1) {
            if (before) await before;
            // After a failure the producer or channel may be stale: rebuild it before the retry.
            await this.sink.reset().catch((err: unknown) => this.log.debug({ err }, 'sink reset failed'));
          }
          const result = await this.stall.watch(fn());
          if (attempt > 1) {
            this.log.info({ attempts: attempt }, `${what} recovered`);
            this.events.onSinkHealth(true);
          }
          return result;
        },
        {
          backoff: this.backoff,
          signal: this.signal,
          isRetriable: (err) => asError(err).retriable,
          onRetry: (err, attempt, waitMs) => {
            if (!failed) {
              failed = true;
              this.failingCalls++;
            }
            const e = asError(err);
            this.metrics.publishErrors.inc({ reason: `${prefix}${e.reason}` });
            this.events.onSinkHealth(false, e);
            if (worthLogging(attempt)) this.log.warn({ err: e, attempt, retryInMs: waitMs, ...context }, `${what} failed, retrying`);
          },
        },
      );
    } catch (err) {
      if (this.signal.aborted) throw err;
      const e = asError(err);
      this.metrics.publishErrors.inc({ reason: `${prefix}${e.reason}` });
      // Not retriable as it stands (a FencedError keeps its class: it decides the exit code).
      if (!e.retriable) throw e;
      throw new SinkError(e.reason, e.message, { retriable: false, cause: e.cause });
    } finally {
      if (failed) this.failingCalls--;
    }
  }
}

/**
 * Any failure of a sink call as a SinkError. A programming error (a TypeError or RangeError, from
 * us or a client library) is never retriable: retrying the same batch would fail the same way
 * forever, republishing everything before it each time.
 */
function asSinkError(err: unknown, reason: string, doing: string): SinkError {
  if (err instanceof SinkError) return err;
  const bug = isProgrammingError(err);
  return new SinkError(bug ? 'client_error' : reason, `${doing}: ${(err as Error)?.message ?? String(err)}`, {
    retriable: !bug,
    cause: err,
  });
}
