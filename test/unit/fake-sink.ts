/**
 * The Sink fake of the pipeline-level unit tests (pipeline, ingest), and the pipeline over it
 * they start the same way: a fresh watermark, every event recorded.
 */
import type { PipelineConfig, PoisonPolicy } from '../../src/config/config.js';
import { type OutboxdError, PoisonError } from '../../src/errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../src/interfaces.js';
import type { Txn } from '../../src/positions/watermark.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics, type Metrics } from '../../src/observability/metrics.js';
import { Pipeline } from '../../src/pipeline/pipeline.js';
import { Watermark } from '../../src/positions/watermark.js';

/** Records what is published and dead-lettered; confirms at once unless told to fail, refuse or wait. */
export class FakeSink implements Sink {
  readonly type = 'stdout' as const;
  /** Sink.batchLimits, when a test sets it before the pipeline is built. */
  readonly batchLimits?: Sink['batchLimits'];
  /** Every message published, in order. */
  published: OutboxMessage[] = [];
  /** The ids of each batch published. */
  batches: string[][] = [];
  deadLetters: DeadLetter[] = [];
  /** Errors the next publishes throw, one each. */
  failNext: Error[] = [];
  /** Ids a publish reports as poisoned (a problem the broker finds). */
  refuse = new Set<string>();
  /** Ids whose problem shows before sending (size, a protocol limit). */
  refuseEarly = new Set<string>();
  /** While set, publishes wait for it. */
  gate: Promise<void> | null = null;
  resets = 0;
  async connect() {}
  check(m: OutboxMessage) {
    return this.refuseEarly.has(m.id) ? new PoisonError('field_too_long', `too long: ${m.id}`) : null;
  }
  /** publish() calls begun (a gated one is waiting for the gate). */
  publishing = 0;
  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    this.publishing++;
    if (this.gate) await this.gate;
    const f = this.failNext.shift();
    if (f) throw f;
    this.published.push(...batch);
    this.batches.push(batch.map((m) => m.id));
    return {
      poisoned: batch.flatMap((m, index) =>
        this.refuse.has(m.id) ? [{ index, error: new PoisonError('oversized', `too big: ${m.id}`) }] : [],
      ),
    };
  }
  async publishDeadLetter(letter: DeadLetter) {
    this.deadLetters.push(letter);
  }
  async reset() {
    this.resets++;
  }
  async close() {}
}

/** What a started pipeline's events reported. */
export interface PipelineEventLog {
  /** The watermark's LSN after each move. */
  advanced: bigint[];
  halted: PoisonError | null;
  fatal: OutboxdError | null;
  health: boolean[];
  stalls: boolean[];
}

/** A started pipeline over `sink` on a watermark at 0, with a silent logger. */
export function startPipeline(
  sink: Sink,
  o: { cfg: PipelineConfig; policy: PoisonPolicy; stallTimeoutMs: number; metrics?: Metrics },
): { pipeline: Pipeline; watermark: Watermark; events: PipelineEventLog; metrics: Metrics } {
  const watermark = new Watermark(0n);
  const metrics = o.metrics ?? createMetrics();
  const events: PipelineEventLog = { advanced: [], halted: null, fatal: null, health: [], stalls: [] };
  watermark.onMove(() => events.advanced.push(watermark.lsn));
  const pipeline = new Pipeline({
    cfg: o.cfg,
    policy: o.policy,
    sink,
    watermark,
    events: {
      onHalt: (e) => {
        events.halted = e;
      },
      onFatal: (e) => {
        events.fatal = e;
      },
      onSinkHealth: (up) => events.health.push(up),
      onStall: (stalled) => events.stalls.push(stalled),
    },
    metrics,
    log: createLogger('silent'),
    stallTimeoutMs: o.stallTimeoutMs,
  });
  pipeline.start();
  return { pipeline, watermark, events, metrics };
}

/** A row that could not be mapped (its key is null), as the ingest hands it to pushPoison. */
export function nullKeyLetter(id: string, txn: Txn, index: number): DeadLetter {
  return {
    id,
    key: null,
    destination: null,
    payload: '{}',
    contentType: 'application/json',
    headers: {},
    error: new PoisonError('null_key', 'key is null'),
    txn,
    index,
  };
}
