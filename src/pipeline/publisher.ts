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

  /** Resolves once the broker confirmed every message not listed as poisoned. */
  async publish(messages: readonly OutboxMessage[]): Promise<PublishOutcome> {
    return this.call('publish', 'unknown', { batch: messages.length }, async () => {
      const started = performance.now();
      const outcome = await this.sink.publish(messages);
      this.metrics.publishDuration.observe((performance.now() - started) / 1000);
      return outcome;
    });
  }

  /** Resolves once the dead-letter destination confirmed the letter. */
  async deadLetter(letter: DeadLetter): Promise<void> {
    await this.call('dead-letter publish', 'dead_letter', {}, () => this.sink.publishDeadLetter(letter));
  }

  private async call<T>(what: string, reason: string, context: object, fn: () => Promise<T>): Promise<T> {
    const asError = (err: unknown) => asSinkError(err, reason, `${what} failed`);
    const prefix = reason === 'dead_letter' ? 'dead_letter_' : '';
    try {
      return await retry(
        async (attempt) => {
          // After a failure the producer or channel may be stale: rebuild it before the retry.
          if (attempt > 1) await this.sink.reset().catch((err: unknown) => this.log.debug({ err }, 'sink reset failed'));
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
