import type { PipelineConfig, PoisonPolicy } from '../config/config.js';
import { FencedError, OutboxdError, type PoisonError, type SinkError } from '../errors.js';
import { withTimeout } from '../retry.js';
import { letterFor } from '../sink/dead-letter.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Txn, Watermark } from '../positions/watermark.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { MessageTracer } from '../observability/tracer.js';
import { type BatchTake, Batches, type Item, type MessageItem } from './batches.js';
import { Overlap } from './overlap.js';
import type { PipelineEvents, PipelineParts } from './parts.js';
import { disposePoison } from './poison.js';
import { Publisher } from './publisher.js';

export type { PipelineEvents, PipelineParts } from './parts.js';

/**
 * Batching and back-pressure between the source and the sink.
 *
 * - Items are published in the order they were pushed (commit order, then statement order), one
 *   batch at a time, or two where the sink allows (Sink.batchesInFlight): then the second holds
 *   no key the first holds (pipeline/overlap.ts). A failed batch is retried whole, and a batch
 *   beside it retries only after it, so per-key order holds across retries.
 * - What is in flight (pushed, not yet confirmed) is bounded in messages and bytes. `push`
 *   returns a promise when the bound is full; the source awaits it, which pauses WAL reading.
 * - A message's transaction is released to the watermark only after the broker confirmed it
 *   (the watermark then tells the stream; see positions/watermark.ts).
 */
export class Pipeline {
  private readonly batches: Batches;
  /** How much one publish may take (Sink.batchLimits). */
  private readonly take: BatchTake;
  private readonly publisher: Publisher;
  private inFlightCount = 0;
  private inFlightByteCount = 0;
  /** The batches at the broker: one, or two where the sink allows (Sink.batchesInFlight). */
  private readonly out: Overlap;
  private halted: PoisonError | null = null;
  private failed: OutboxdError | null = null;
  private stopping = false;
  private spaceWaiters: Array<() => void> = [];
  private idleWaiters: Array<() => void> = [];
  private wake: (() => void) | null = null;
  /** Aborted by stop(): ends a retry's wait at once. */
  private readonly stopSignal = new AbortController();
  private loop: Promise<void> | null = null;
  private readonly received = new Map<string, number>();
  /** Settles when stop() runs: what a halted pipeline hands the source, so WAL reading stops. */
  private readonly stopped: Promise<void>;
  private markStopped!: () => void;

  private readonly cfg: PipelineConfig;
  private readonly policy: PoisonPolicy;
  private readonly sink: Sink;
  private readonly watermark: Watermark;
  private readonly events: PipelineEvents;
  private readonly metrics: Metrics;
  private readonly log: Logger;
  private readonly label: (destination: string) => string;
  private readonly tracer: MessageTracer | null;

  constructor(parts: PipelineParts) {
    const { cfg, sink, events, metrics, log } = parts;
    this.cfg = cfg;
    this.policy = parts.policy;
    this.sink = sink;
    this.watermark = parts.watermark;
    this.events = events;
    this.metrics = metrics;
    this.log = log;
    this.label = parts.label ?? ((d) => d);
    this.tracer = parts.tracer ?? null;
    this.batches = new Batches(cfg, () => this.kick());
    const limits = sink.batchLimits;
    this.take = limits
      ? {
          batchMaxMessages: Math.max(cfg.batchMaxMessages, limits.batchMaxMessages),
          batchMaxBytes: Math.max(cfg.batchMaxBytes, limits.batchMaxBytes),
        }
      : cfg;
    this.out = new Overlap(sink.batchesInFlight ?? 1, () => {
      if (this.inFlightCount === 0) for (const w of this.idleWaiters.splice(0)) w();
      this.kick();
    });
    this.publisher = new Publisher(sink, cfg.retry, parts.stallTimeoutMs, events, metrics, log, this.stopSignal.signal);
    this.stopped = new Promise((resolve) => {
      this.markStopped = resolve;
    });
    metrics.probes.inFlightMessages = () => this.inFlightCount;
    metrics.probes.inFlightBytes = () => this.inFlightByteCount;
    metrics.probes.flushReceived = () => {
      for (const [d, n] of this.received) metrics.messagesReceived.inc({ destination: d }, n);
      this.received.clear();
    };
  }

  start(): void {
    this.loop ??= this.run().catch((err: unknown) => {
      const e =
        err instanceof OutboxdError ? err : new OutboxdError('INTERNAL', `pipeline crashed: ${(err as Error)?.message}`, { cause: err });
      this.fail(e);
    });
  }

  get inFlightMessages(): number {
    return this.inFlightCount;
  }

  get inFlightBytes(): number {
    return this.inFlightByteCount;
  }

  /** Nothing queued or being published. */
  get idle(): boolean {
    return this.inFlightCount === 0;
  }

  get haltedBy(): PoisonError | null {
    return this.halted;
  }

  /**
   * Accepts a message of `txn`, in commit order. Returns undefined while there is room, or a
   * promise that resolves once the in-flight bound has room again: the caller must await it
   * before pushing more (that is the back-pressure that pauses WAL reading).
   */
  push(message: OutboxMessage, txn: Txn): Promise<void> | undefined {
    const problem = this.sink.check(message);
    if (problem !== null) return this.pushPoison(letterFor(message, problem), txn);
    const label = this.label(message.destination);
    this.received.set(label, (this.received.get(label) ?? 0) + 1);
    // Tracing: the message's span starts here, before any sink encodes it, since its traceparent
    // header becomes the span's. With tracing off this one branch is all it costs.
    const m = this.tracer === null ? message : this.tracer.start(message);
    return this.enqueue({ kind: 'message', message: m, txn }, m.sizeBytes);
  }

  /** Accepts a message that could not be mapped; the poison policy decides what happens to it. */
  pushPoison(letter: DeadLetter, txn: Txn): Promise<void> | undefined {
    const size = (typeof letter.payload === 'string' ? letter.payload.length : letter.payload.length) + 256;
    return this.enqueue({ kind: 'poison', letter, txn, sizeBytes: size }, size);
  }

  private enqueue(item: Item, size: number): Promise<void> | undefined {
    this.watermark.track(item.txn);
    this.inFlightCount++;
    this.inFlightByteCount += size;
    this.batches.add(item, size, this.out.busy);
    // Halted, nothing will be confirmed until an operator acts: stop reading WAL altogether, or
    // the queue (and the watermark) would grow with every transaction until memory runs out.
    if (this.halted) return this.stopped;
    if (this.hasRoom()) return undefined;
    this.metrics.backpressurePauses.inc();
    return new Promise((resolve) => this.spaceWaiters.push(resolve));
  }

  private hasRoom(): boolean {
    return this.inFlightCount < this.cfg.maxInFlightMessages && this.inFlightByteCount < this.cfg.maxInFlightBytes;
  }

  /**
   * Resolves once everything pushed so far is confirmed, or when the pipeline halted or failed
   * (then it never will be), or after `timeoutMs`. Returns true if everything was confirmed.
   */
  async drain(timeoutMs: number): Promise<boolean> {
    this.kick();
    if (this.inFlightCount === 0) return true;
    if (this.halted || this.failed) return false;
    const idle = new Promise<boolean>((resolve) => this.idleWaiters.push(() => resolve(this.inFlightCount === 0)));
    return withTimeout(idle, timeoutMs, () => false);
  }

  /**
   * Resolves true once nothing is in flight; false if that can no longer happen (halted, failed)
   * or `signal` aborted first.
   */
  whenIdle(signal: AbortSignal): Promise<boolean> {
    this.kick();
    if (this.inFlightCount === 0) return Promise.resolve(true);
    if (this.halted || this.failed || signal.aborted) return Promise.resolve(false);
    return new Promise((resolve) => {
      const onAbort = () => resolve(false);
      signal.addEventListener('abort', onAbort, { once: true });
      this.idleWaiters.push(() => {
        signal.removeEventListener('abort', onAbort);
        resolve(this.inFlightCount === 0);
      });
    });
  }

  /** Stops the publish loop after the current batch. Unconfirmed items stay unconfirmed. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.markStopped();
    this.stopSignal.abort(new Error('pipeline stopped'));
    this.kick();
    this.batches.stop();
    await this.loop;
    this.releaseWaiters();
  }

  private kick(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Wakes whoever waits for room or for the drain. A halted pipeline keeps the source waiting. */
  private releaseWaiters(): void {
    if (!this.halted || this.stopping) for (const w of this.spaceWaiters.splice(0)) w();
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async run(): Promise<void> {
    while (!this.stopping && !this.halted && !this.failed) {
      // Full, or a batch is being retried (another beside it would only be torn down with it).
      if (this.out.full || (this.out.busy && this.publisher.failing)) {
        await this.out.oneDone();
        continue;
      }
      // Take what is queued at once when someone waits for the drain, or when stopping.
      const taken = this.batches.next(this.idleWaiters.length > 0 || this.stopping, this.take);
      if (taken === null) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        continue;
      }
      const batch = this.out.beside(taken, this.batches);
      if (batch === null) await this.out.oneDone();
      else this.out.send(batch, (before) => this.publish(batch, before));
    }
    await this.out.allDone();
    this.releaseWaiters();
  }

  /** Publishes a batch, or disposes of a poison item. Never rejects. */
  private async publish(batch: Item[], before: Promise<void> | undefined): Promise<void> {
    const first = batch[0] as Item;
    try {
      if (first.kind === 'poison') await this.disposePoison(first.letter, first.txn, first.sizeBytes);
      else await this.publishBatch(batch as MessageItem[], before);
    } catch (err) {
      this.fail(new OutboxdError('INTERNAL', `pipeline crashed: ${(err as Error)?.message}`, { cause: err }));
    }
  }

  /** Publishes a batch; `before`, the end of the batch at the broker beside it, which a retry waits for. */
  private async publishBatch(items: MessageItem[], before?: Promise<void>): Promise<void> {
    const messages = items.map((i) => i.message);
    this.metrics.batchSize.observe(messages.length);
    const trace = this.tracer === null ? null : this.tracer.publishing(messages);
    let outcome: PublishOutcome;
    try {
      outcome = await this.publisher.publish(messages, before);
    } catch (err) {
      trace?.failed(err as Error);
      this.failUnlessStopping(err as SinkError);
      return;
    }
    trace?.confirmed(outcome);
    const poisoned = new Map(outcome.poisoned.map((p) => [p.index, p.error]));
    const unsent = new Set(outcome.unsent);
    const now = Date.now();
    const published = new Map<string, number>();
    for (let i = 0; i < items.length; i++) {
      // A poisoned one is settled below, in order, by the poison policy; an unsent one after it.
      if (poisoned.has(i) || unsent.has(i)) continue;
      const { message, txn } = items[i] as (typeof items)[number];
      const label = this.label(message.destination);
      published.set(label, (published.get(label) ?? 0) + 1);
      this.metrics.commitToAck.observe(Math.max(0, now - txn.commitTimeMs) / 1000);
      this.settle(txn, message.sizeBytes);
    }
    for (const [destination, n] of published) this.metrics.messagesPublished.inc({ destination }, n);
    for (const [index, error] of poisoned) {
      const { message, txn } = items[index] as (typeof items)[number];
      await this.disposePoison(letterFor(message, error), txn, message.sizeBytes);
      if (this.halted || this.failed) return;
    }
    // Exactly-once: what came after a poisoned message follows its dead letter, in order.
    if (unsent.size > 0 && !this.stopping) await this.publishBatch([...unsent].map((i) => items[i] as MessageItem));
  }

  /** Applies the poison policy to one message. Under `dead-letter` it is confirmed only after the DLQ confirmed. */
  private async disposePoison(letter: DeadLetter, txn: Txn, size: number): Promise<void> {
    this.metrics.poisonMessages.inc({ reason: letter.error.reason });
    let deadLettered: boolean;
    try {
      deadLettered = await disposePoison(this.policy, letter, this.publisher, this.log, 'the slot will not advance past it', {
        xid: txn.xid,
      });
    } catch (err) {
      this.failUnlessStopping(err as SinkError);
      return;
    }
    if (!deadLettered) {
      this.halted = letter.error;
      this.events.onHalt(letter.error);
      this.releaseWaiters();
      return;
    }
    this.metrics.deadLettered.inc();
    // Its transaction may now be complete: the watermark moves at once, as for a published batch.
    this.settle(txn, size);
  }

  /** One item is confirmed: free its room and release its transaction to the watermark. */
  private settle(txn: Txn, size: number): void {
    this.inFlightCount--;
    this.inFlightByteCount -= size;
    this.watermark.release(txn);
    if (this.spaceWaiters.length > 0 && this.hasRoom()) for (const w of this.spaceWaiters.splice(0)) w();
  }

  /**
   * A failure while stopping is the stop's doing (the sink was closed under the publish), except
   * a fenced producer: that one the relay must report, and exit with its code.
   */
  private failUnlessStopping(err: SinkError): void {
    if (!this.stopping || err instanceof FencedError) this.fail(err);
  }

  private fail(err: OutboxdError): void {
    if (this.failed) return;
    this.failed = err;
    this.events.onFatal(err);
    this.releaseWaiters();
  }
}
