import type kafkajs from 'kafkajs';
import { FencedError, SinkError } from '../../errors.js';
import { classify, isFenced } from './client.js';

/**
 * Why the exactly-once sink must take its transactional id again before it publishes, in rising
 * order of concern (a later one replaces an earlier one, never the reverse):
 * - `dropped`: a failure dropped the producer; a new one must fence (InitProducerId) to publish.
 * - `commit`: a commit's answer was lost; it may or may not have happened. The fence settles it.
 * - `fenced`: a fenced or epoch error (INVALID_PRODUCER_EPOCH, PRODUCER_FENCED). Another relay
 *   took the id, or the broker aborted our transaction after transactionTimeout: the two look
 *   alike, and a clock cannot tell them apart (a paused process sees the timeout pass too).
 */
export type Doubt = 'none' | 'dropped' | 'commit' | 'fenced';
const RANK: Record<Doubt, number> = { none: 0, dropped: 1, commit: 2, fenced: 3 };

/** Where the producers for the id come from, and where their news goes. */
export interface ProducerSource {
  /** A connected producer for the id, without InitProducerId (a standby must not fence the leader). */
  connect(): Promise<kafkajs.Producer>;
  /** The broker closed a producer's connection (one we drop on purpose does not count). */
  disconnected(): void;
  /** This relay is fenced for good. */
  fenced(): void;
}

/**
 * The exactly-once sink's hold on its transactional id (docs/adr/0009): one producer at a time,
 * fenced in (InitProducerId) when a session starts, dropped after any failure, and the doubt a
 * failure leaves.
 *
 * THE INVARIANT (issue 21, finding 7). InitProducerId fences whoever holds the id, so only the
 * leader may send it: once when its session starts (`takeOver`, right after the session took the
 * leader lock), and after that only through `settle`, which (1) proves that this relay still
 * holds the slot's leader lock, (2) fences, (3) re-reads the checkpoint, in that order, before
 * anything is published again. A transaction never begins in doubt (`begin`). A relay that cannot
 * prove it leads is fenced for good (FencedError: exit code 5): it never fences back the relay
 * that took over, and never publishes a batch that relay may have published already.
 */
export class TransactionalId {
  private producer: kafkajs.Producer | null = null;
  /** The producer has fenced every earlier holder of the id (InitProducerId), since it was made. */
  private initialized = false;
  private fencedBy: FencedError | null = null;
  /** Before the first session there is nothing to doubt: a session starts with `takeOver`. */
  private doubt: Doubt = 'none';
  private inSession = false;
  /** When the current transaction began: a fenced answer after transactionTimeout is named so. */
  private txnStartedAt: number | null = null;
  private stopReporting: () => void = () => undefined;

  constructor(
    readonly id: string,
    private readonly transactionTimeoutMs: number,
    private readonly producers: ProducerSource,
  ) {}

  /** A producer, connected (not fenced in). Rejects with the FencedError once fenced for good. */
  async get(): Promise<kafkajs.Producer> {
    if (this.fencedBy) throw this.fencedBy;
    if (this.producer) return this.producer;
    const producer = await this.producers.connect();
    if (this.fencedBy) {
      await producer.disconnect().catch(() => undefined);
      throw this.fencedBy;
    }
    this.stopReporting = producer.on(producer.events.DISCONNECT, () => this.producers.disconnected());
    this.producer = producer;
    this.initialized = false;
    return producer;
  }

  /** The producer, holding the id: InitProducerId first, once per producer; the previous holder is fenced. */
  private async hold(): Promise<kafkajs.Producer> {
    const producer = await this.get();
    if (this.initialized) return producer;
    try {
      // kafkajs sends InitProducerId with a producer's first transaction. Nothing is added to
      // this one, so its abort sends nothing.
      const txn = await producer.transaction();
      await txn.abort();
    } catch (err) {
      throw this.failure(err, `taking transactional id "${this.id}"`);
    }
    this.initialized = true;
    return producer;
  }

  /**
   * A session starts: the caller has just taken the leader lock. A fresh producer takes the id
   * (fencing any other holder); the caller then reads the checkpoint and calls `settled`.
   */
  async takeOver(): Promise<void> {
    await this.release();
    this.inSession = true;
    this.doubt = 'dropped';
    await this.hold();
  }

  /** The caller read the checkpoint as the holder of the id: nothing is in doubt. */
  settled(): void {
    this.doubt = 'none';
  }

  /** What must be settled before the next transaction. */
  get inDoubt(): Doubt {
    return this.doubt;
  }

  /** A commit's answer was lost. */
  doubtCommit(): void {
    this.raise('commit');
  }

  /**
   * Clears a doubt: (1) `stillLeader()` (false: fenced for good; rejects with the FencedError and
   * fences no one); (2) the fence; (3) `reread()`, the checkpoint. Rejects with a step's error
   * otherwise; the doubt stays, and the next attempt starts again from (1). Resolves true when it
   * re-read, false when nothing was in doubt.
   */
  async settle(stillLeader: () => Promise<boolean>, reread: () => Promise<void>): Promise<boolean> {
    const doubt = this.doubt;
    if (doubt === 'none') return false;
    if (!(await stillLeader())) {
      throw this.fencedForGood(
        doubt === 'fenced'
          ? `fenced: another producer took transactional id "${this.id}" (a second relay, or a standby that took over), and this relay no longer holds the slot's leader lock; stopping without publishing more`
          : `fenced: this relay no longer holds the slot's leader lock (another relay may lead now), so it must not take transactional id "${this.id}" again after a failed transaction; stopping without publishing more`,
      );
    }
    await this.hold();
    await reread();
    this.doubt = 'none';
    return true;
  }

  /** A transaction on the producer that holds the id. Never in doubt: `settle` comes first. */
  async begin(): Promise<kafkajs.Transaction> {
    if (this.fencedBy) throw this.fencedBy;
    if (this.doubt !== 'none' || !this.inSession) {
      throw new SinkError('client_error', `exactly-once: a transaction was begun with the transactional id in doubt (${this.doubt})`, {
        retriable: false,
      });
    }
    const producer = await this.hold();
    const txn = await producer.transaction();
    this.txnStartedAt = Date.now();
    return txn;
  }

  /**
   * kafkajs error → SinkError. A fenced or epoch error is never final by itself: it leaves the
   * doubt `fenced` and is retriable; `settle` decides, by the leader lock, whether this relay may
   * go on. Once fenced for good, every failure is that FencedError.
   */
  failure(err: unknown, doing: string): SinkError {
    if (this.fencedBy) return this.fencedBy;
    if (err instanceof SinkError) return err;
    if (!isFenced(err)) return classify(err, doing);
    this.raise('fenced');
    const openMs = this.txnStartedAt === null ? 0 : Date.now() - this.txnStartedAt;
    const late = openMs >= this.transactionTimeoutMs;
    return new SinkError(
      late ? 'transaction_timeout' : 'fenced_unconfirmed',
      late
        ? `${doing}: the broker fenced the producer after its transaction was open ${openMs} ms, longer than sink.kafka.transactionTimeout (${this.transactionTimeoutMs} ms): it aborted the transaction, or another relay took the id; checking the leader lock before going on`
        : `${doing}: another producer took transactional id "${this.id}"; checking the leader lock before going on`,
      { retriable: true, cause: err },
    );
  }

  /** Drops the producer after a failure: a new one takes the id only through `settle`. */
  async drop(): Promise<void> {
    if (this.inSession) this.raise('dropped');
    await this.release();
  }

  /** Drops the producer for good (the sink closes). */
  async close(): Promise<void> {
    this.inSession = false;
    await this.release();
  }

  private raise(d: Doubt): void {
    if (RANK[d] > RANK[this.doubt]) this.doubt = d;
  }

  private fencedForGood(message: string): FencedError {
    this.fencedBy ??= new FencedError(message);
    this.producers.fenced();
    return this.fencedBy;
  }

  private async release(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    this.initialized = false;
    this.stopReporting();
    this.stopReporting = () => undefined;
    if (p) await p.disconnect().catch(() => undefined);
  }
}
