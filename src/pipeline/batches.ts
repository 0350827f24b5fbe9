import type { Txn } from '../positions/watermark.js';
import type { PipelineConfig } from '../config/config.js';
import type { DeadLetter, OutboxMessage } from '../interfaces.js';

/** A unit of work in commit order: a message to publish, or a poison message to dispose of. */
export type Item =
  | { readonly kind: 'message'; readonly message: OutboxMessage; readonly txn: Txn }
  | { readonly kind: 'poison'; readonly letter: DeadLetter; readonly txn: Txn; readonly sizeBytes: number };

export type MessageItem = Extract<Item, { kind: 'message' }>;

function sizeOf(item: Item): number {
  return item.kind === 'message' ? item.message.sizeBytes : item.sizeBytes;
}

/** How much one batch may take: the pipeline's bounds, or a sink's larger ones (Sink.batchLimits). */
export type BatchTake = Pick<PipelineConfig, 'batchMaxMessages' | 'batchMaxBytes'>;

/**
 * The items waiting to be published, in commit order, cut into batches: up to
 * `batchMaxMessages` and `batchMaxBytes`, due when full or when the oldest item has waited
 * `linger`. A poison item always travels alone, so everything before it is settled first.
 */
export class Batches {
  private queue: Item[] = [];
  private head = 0;
  private bytes = 0;
  private firstAt = 0;
  private timer: NodeJS.Timeout | null = null;

  /** `due` is called when a batch may have become due (full, or its linger passed). */
  constructor(
    private readonly cfg: PipelineConfig,
    private readonly due: () => void,
  ) {}

  /** Queues an item of `size` bytes. `busy`: a batch is being published (it will look again). */
  add(item: Item, size: number, busy: boolean): void {
    if (this.queue.length === this.head) this.firstAt = performance.now();
    this.queue.push(item);
    this.bytes += size;
    if (this.queue.length - this.head >= this.cfg.batchMaxMessages || this.bytes >= this.cfg.batchMaxBytes) this.due();
    else if (!busy) this.lingerFor(this.cfg.lingerMs);
  }

  /**
   * The next batch, or null if none is due yet. `now`: take what is queued without lingering.
   * `take`: the most one batch may hold, when more than one batch is queued (a Kafka
   * transaction: docs/adr/0009); a batch is due by the pipeline's own bounds either way.
   */
  next(now: boolean, take: BatchTake = this.cfg): Item[] | null {
    const queued = this.queue.length - this.head;
    if (queued === 0) return null;
    const waited = performance.now() - this.firstAt;
    if (!now && queued < this.cfg.batchMaxMessages && this.bytes < this.cfg.batchMaxBytes && waited < this.cfg.lingerMs) {
      this.lingerFor(this.cfg.lingerMs - waited);
      return null;
    }
    const batch: Item[] = [];
    let bytes = 0;
    while (this.head < this.queue.length && batch.length < take.batchMaxMessages) {
      const item = this.queue[this.head] as Item;
      if (item.kind === 'poison' && batch.length > 0) break;
      const size = sizeOf(item);
      if (batch.length > 0 && bytes + size > take.batchMaxBytes) break;
      batch.push(item);
      bytes += size;
      this.head++;
      if (item.kind === 'poison') break;
    }
    this.bytes -= bytes;
    if (this.head > 4096 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (this.head < this.queue.length) this.firstAt = performance.now();
    return batch;
  }

  /**
   * Puts `items` back at the front of the queue, in their order, due at once: items a batch took
   * that may not go out yet (pipeline/overlap.ts).
   */
  putBack(items: readonly Item[]): void {
    if (items.length === 0) return;
    if (this.head >= items.length) {
      this.head -= items.length;
      for (let i = 0; i < items.length; i++) this.queue[this.head + i] = items[i] as Item;
    } else {
      this.queue = [...items, ...this.queue.slice(this.head)];
      this.head = 0;
    }
    for (const item of items) this.bytes += sizeOf(item);
    // They were due when taken: they go out as soon as they may, never after another linger.
    this.firstAt = performance.now() - this.cfg.lingerMs;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private lingerFor(ms: number): void {
    if (this.timer !== null) return;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.due();
      },
      Math.max(0, ms),
    );
  }
}
