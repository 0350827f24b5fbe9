import './kafkajs-speedups.js'; // first: it must run before kafkajs loads
import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../config/config.js';
import { FencedError, type PoisonError, SinkError } from '../errors.js';
import type { DeadLetter, OutboxMessage, Position, PublishOutcome, Sink, SourceIdentity } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import type { DeadLetterForm } from './dead-letter.js';
import type { SinkStatus } from './index.js';
import {
  checkpointKey,
  checkpointMessage,
  describePosition,
  foreignCheckpoint,
  isAfter,
  positionOf,
  readCheckpoints,
} from './kafka-checkpoint.js';
import * as client from './kafka-client.js';
import { kafkajsPartitionOf } from './kafkajs-speedups.js';

/**
 * Tests only (test/faults/exactly-once.test.ts): a pause before every Kafka commit, so a kill
 * leaves a transaction open (its records in the log, to be aborted), and one after it, before
 * the pipeline hears of it, so a kill lands between the Kafka commit and the slot confirm.
 */
const PAUSE_BEFORE_COMMIT_MS = Number(process.env.OUTBOXD_TEST_PAUSE_BEFORE_COMMIT_MS ?? 0);
const PAUSE_AFTER_COMMIT_MS = Number(process.env.OUTBOXD_TEST_PAUSE_AFTER_COMMIT_MS ?? 0);
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the exactly-once sink reports besides the connection (metrics). */
export type TransactionEvents = Pick<SinkStatus, 'transaction' | 'fenced' | 'checkpoint'>;

/**
 * Kafka exactly once (docs/adr/0009). Each pipeline batch is one Kafka transaction: its messages
 * and a checkpoint record, the position (commit LSN, index) of its last event, in the compacted
 * checkpoint topic. A read_committed consumer sees a batch whole, with its checkpoint, or not at
 * all; on every start the relay reads the checkpoint and skips every event at or before it, so a
 * crash anywhere (also between the Kafka commit and the slot confirm) publishes nothing twice.
 *
 * - Fencing: the producer's InitProducerId (at the start of every replication session, after the
 *   relay took the leader lock) bumps the epoch of `transactionalId`; a relay still holding the
 *   old epoch gets a fenced error on its next request and stops (FencedError, exit code 5).
 * - Failures: any error inside a transaction aborts it; the pipeline retries the batch whole. A
 *   commit whose answer was lost may or may not have committed: the next attempt re-fences
 *   (which settles it) and re-reads the checkpoint before publishing anything.
 * - Poison: a message the broker refuses is found by committing the messages before it and then
 *   one message per transaction; the rest of the batch goes back to the pipeline as `unsent`, so
 *   the dead letter (in a transaction with its own checkpoint) comes in order.
 */
export class KafkaExactlyOnceSink implements Sink {
  readonly type = 'kafka' as const;
  private readonly kafka: kafkajs.Kafka;
  private readonly transactionalId: string;
  private producer: kafkajs.Producer | null = null;
  /** The producer has fenced every earlier holder of the id (InitProducerId), this session. */
  private initialized = false;
  private readonly topics: client.TopicCheck;
  private source: SourceIdentity | null = null;
  /** The last checkpoint known committed: events at or before it are in Kafka already. */
  private committed: Position | null = null;
  /** A commit's outcome is unknown: fence and re-read the checkpoint before the next publish. */
  private unsure = false;
  private fencedBy: FencedError | null = null;
  private stopReporting: () => void = () => undefined;
  /** When the current transaction began (a fenced answer after transactionTimeout is our own timeout). */
  private txnStartedAt: number | null = null;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    private readonly slot: string,
    private readonly log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
    private readonly events: TransactionEvents = { transaction: () => undefined, fenced: () => undefined, checkpoint: () => undefined },
  ) {
    this.kafka = client.createKafka(cfg, log);
    this.topics = new client.TopicCheck(this.kafka, cfg);
    this.transactionalId = cfg.transactionalId;
  }

  /** Connects a producer, without InitProducerId: a standby must not fence the leader. */
  async connect(): Promise<void> {
    await this.getProducer();
    this.onConnection(true);
  }

  private async getProducer(): Promise<kafkajs.Producer> {
    if (this.fencedBy) throw this.fencedBy;
    if (this.producer) return this.producer;
    const producer = await client.connectProducer(this.kafka, this.cfg, this.onConnection, {
      // Quick retries inside a transaction. The next transaction's first request often meets
      // CONCURRENT_TRANSACTIONS while the broker writes the previous one's markers (a millisecond
      // or two); kafkajs's default wait (200 ms) would cost that much per batch, and even 10 ms
      // was most of a transaction's time at 2,000 tx/s (bench latency). Waits of 2, 3, 4.5, …
      // ms, about 0.5 s in all: a transaction must not outlive transactionTimeout in kafkajs's
      // retries, the pipeline retries it whole.
      retry: { retries: 12, initialRetryTime: 2, multiplier: 1.5, maxRetryTime: 2_000 },
      transactionalId: this.transactionalId,
      transactionTimeout: this.cfg.transactionTimeoutMs,
    });
    // A producer we drop on purpose (drop()) stops reporting first: only the broker's doing counts.
    this.stopReporting = producer.on(producer.events.DISCONNECT, () => this.onConnection(false));
    this.producer = producer;
    this.initialized = false;
    this.onConnection(true);
    return producer;
  }

  /**
   * Takes the transactional id (fencing any other holder) and reads this source's checkpoint.
   * The fence comes first: it settles the previous holder's last transaction (committed or
   * aborted), so the read that follows is final.
   */
  async readCheckpoint(source: SourceIdentity): Promise<Position | null> {
    this.source = source;
    const key = checkpointKey(this.slot, source);
    // Before fencing anyone: is this id another database's? Then fencing would stop that relay.
    // (Up to the stable offset only: the previous holder's open transaction ends with our fence.)
    const foreign = foreignCheckpoint(await this.read(key, 'stable'), source, this.cfg.checkpointTopic, this.transactionalId);
    if (foreign) throw foreign;
    await this.reset();
    await this.fence();
    const { mine } = await this.read(key);
    this.committed = mine?.position ?? null;
    this.unsure = false;
    if (this.committed) this.events.checkpoint(this.committed);
    this.log.info(
      {
        checkpointTopic: this.cfg.checkpointTopic,
        key,
        checkpoint: describePosition(this.committed),
        transactionalId: this.transactionalId,
      },
      mine ? 'exactly-once: resuming after the checkpoint' : 'exactly-once: no checkpoint yet; every event from the slot on is published',
    );
    return this.committed;
  }

  private read(key: string, to: 'log-end' | 'stable' = 'log-end') {
    return readCheckpoints(
      this.kafka,
      this.cfg.checkpointTopic,
      key,
      this.transactionalId,
      this.cfg.transactionTimeoutMs + this.cfg.requestTimeoutMs,
      to,
    );
  }

  /** InitProducerId: from here on this producer holds the id; the previous holder is fenced. */
  private async fence(): Promise<kafkajs.Producer> {
    const producer = await this.getProducer();
    if (this.initialized) return producer;
    try {
      // kafkajs sends InitProducerId with a producer's first transaction. Nothing is added to
      // this one, so its abort sends nothing.
      const txn = await producer.transaction();
      await txn.abort();
    } catch (err) {
      throw this.failure(err, `taking transactional id "${this.transactionalId}"`);
    }
    this.initialized = true;
    return producer;
  }

  check(m: OutboxMessage): PoisonError | null {
    return client.checkMessage(this.cfg, m);
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    await this.settleDoubt();
    // After a commit whose answer was lost: what the re-read checkpoint covers is in Kafka already.
    const pending: number[] = [];
    for (let i = 0; i < batch.length; i++) if (isAfter(positionOf(batch[i] as OutboxMessage), this.committed)) pending.push(i);
    if (pending.length === 0) return { poisoned: [] };
    const messages = pending.length === batch.length ? batch : pending.map((i) => batch[i] as OutboxMessage);
    const failedAt = await this.transact(messages);
    this.onConnection(true);
    if (failedAt === null) return { poisoned: [] };
    return this.isolate(messages, failedAt, pending);
  }

  /**
   * A send in the transaction hit a message error at chunk-start `from`: commit what came before,
   * then one message per transaction until the broker refuses one. It is poison; the messages
   * after it go back to the pipeline as `unsent`, to follow its dead letter.
   */
  private async isolate(messages: readonly OutboxMessage[], from: number, pending: number[]): Promise<PublishOutcome> {
    if (from > 0 && (await this.transact(messages.slice(0, from))) !== null) {
      throw new SinkError('client_error', 'publishing to Kafka: a send failed, then succeeded when repeated alone', { retriable: true });
    }
    const end = client.chunkEnd(messages, from, this.cfg.maxMessageBytes);
    for (let i = from; i < end; i++) {
      const m = messages[i] as OutboxMessage;
      const refused = await this.transact([m], true);
      if (refused === null) continue;
      const unsent = pending.slice(i + 1);
      return { poisoned: [{ index: pending[i] as number, error: client.refusedMessage(m, this.lastRefusal) }], unsent };
    }
    // No single message reproduced the error: they are all committed now; the rest follows.
    return { poisoned: [], unsent: pending.slice(end) };
  }

  private lastRefusal: unknown = null;

  /**
   * One transaction: `messages`, then the checkpoint at the last one, then commit. Resolves null
   * once committed, or the index of the first message of the chunk the broker refused (the
   * transaction is aborted). Rejects with a SinkError for anything else (aborted too).
   */
  private async transact(messages: readonly OutboxMessage[], single = false): Promise<number | null> {
    const producer = await this.fence();
    const last = messages[messages.length - 1] as OutboxMessage;
    const checkpoint = positionOf(last);
    const parts = single ? [messages.map((m, index) => ({ index, m }))] : client.chunks(messages, this.cfg.maxMessageBytes);
    let txn: kafkajs.Transaction | null = null;
    try {
      txn = await producer.transaction();
      this.txnStartedAt = Date.now();
      for (let p = 0; p < parts.length; p++) {
        const part = parts[p] as Array<{ index: number; m: OutboxMessage }>;
        const topics = client.topicMessages(part.map((c) => c.m));
        // The checkpoint goes with the first send: its partition joins the transaction in the
        // same AddPartitionsToTxn as the first messages' (one round trip, not two). Where in the
        // transaction it sits does not matter; that it commits with the messages does.
        if (p === 0)
          topics.push(
            checkpointMessage(this.cfg.checkpointTopic, this.transactionalId, this.slot, this.source as SourceIdentity, checkpoint),
          );
        try {
          await txn.sendBatch({ acks: -1, compression: client.compressionOf(this.cfg), topicMessages: topics });
        } catch (err) {
          if (client.protocolErrorType(err) === client.MISSING_TOPIC)
            throw await this.topics.missing(
              part.map((c) => c.m.destination),
              err,
            );
          if (!client.isMessageError(err) || client.isFenced(err)) throw err;
          this.lastRefusal = err;
          await this.abort(txn);
          return (part[0] as { index: number }).index;
        }
      }
    } catch (err) {
      if (txn) await this.abort(txn);
      throw this.failure(err, 'publishing to Kafka');
    }
    await this.commit(txn, checkpoint);
    return null;
  }

  private async commit(txn: kafkajs.Transaction, checkpoint: Position): Promise<void> {
    if (PAUSE_BEFORE_COMMIT_MS > 0) await pause(PAUSE_BEFORE_COMMIT_MS);
    try {
      await txn.commit();
    } catch (err) {
      // The broker may have committed before the answer was lost: settle it before going on.
      this.unsure = true;
      await this.drop();
      throw this.failure(err, 'committing the Kafka transaction');
    }
    this.committed = checkpoint;
    this.events.transaction('committed');
    this.events.checkpoint(checkpoint);
    if (PAUSE_AFTER_COMMIT_MS > 0) await pause(PAUSE_AFTER_COMMIT_MS);
  }

  /** Aborts best-effort; the producer is dropped either way (a fresh one fences any leftover). */
  private async abort(txn: kafkajs.Transaction): Promise<void> {
    this.events.transaction('aborted');
    if (txn.isActive()) await txn.abort().catch(() => undefined);
    await this.drop();
  }

  /** Before publishing after an unknown commit outcome: fence (which settles it), re-read. */
  private async settleDoubt(): Promise<void> {
    if (this.source === null) {
      throw new SinkError('client_error', 'exactly-once sink: publish before the checkpoint was read', { retriable: false });
    }
    if (!this.unsure) return;
    await this.fence();
    const { mine } = await this.read(checkpointKey(this.slot, this.source)).catch((err: unknown) => {
      // The topic was there when the session started: missing now is the broker's moment.
      if (err instanceof SinkError && !err.retriable && err.reason === 'checkpoint_topic_missing') {
        throw new SinkError(err.reason, err.message, { retriable: true, cause: err });
      }
      throw err;
    });
    this.log.info({ checkpoint: describePosition(mine?.position ?? null) }, 'exactly-once: checkpoint re-read after an uncertain commit');
    this.committed = mine?.position ?? null;
    this.unsure = false;
  }

  /**
   * The dead letter in a transaction with its own checkpoint: its largest form that fits
   * (dead-letter.ts), the next when the broker refuses one as too large.
   */
  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    await this.settleDoubt();
    const at: Position = { commitLsn: letter.txn.commitLsn, index: letter.index };
    if (!isAfter(at, this.committed)) return;
    const sent: { txn: kafkajs.Transaction | null } = { txn: null };
    const send = async (form: DeadLetterForm): Promise<void> => {
      const producer = await this.fence();
      let txn: kafkajs.Transaction | null = null;
      try {
        txn = await producer.transaction();
        this.txnStartedAt = Date.now();
        // The form's key, not the letter's: the smallest form leaves out a key too large to carry.
        const message = { key: form.key, value: form.body, headers: form.headers };
        await txn.sendBatch({
          acks: -1,
          topicMessages: [
            { topic: this.cfg.deadLetterTopic, messages: [message] },
            checkpointMessage(this.cfg.checkpointTopic, this.transactionalId, this.slot, this.source as SourceIdentity, at),
          ],
        });
        sent.txn = txn;
      } catch (err) {
        if (txn) await this.abort(txn);
        throw err;
      }
    };
    await client.sendDeadLetter(this.cfg, letter, this.topics, send, (err, doing) => this.failure(err, doing));
    if (sent.txn) await this.commit(sent.txn, at);
  }

  /** kafkajs error → SinkError; a fenced producer → FencedError, remembered: nothing more goes out. */
  private failure(err: unknown, doing: string): SinkError {
    if (err instanceof FencedError) return err;
    if (client.isFenced(err) && this.txnStartedAt !== null && Date.now() - this.txnStartedAt >= this.cfg.transactionTimeoutMs) {
      // The broker aborts a transaction open longer than transactionTimeout and bumps the epoch
      // itself: the same answer as a fence, but our own doing. Retry on a fresh producer.
      return new SinkError(
        'transaction_timeout',
        `${doing}: the broker aborted the transaction, open for longer than sink.kafka.transactionTimeout (${this.cfg.transactionTimeoutMs} ms)`,
        { retriable: true, cause: err },
      );
    }
    if (client.isFenced(err)) {
      this.fencedBy ??= new FencedError(
        `${doing}: fenced: another producer took transactional id "${this.transactionalId}" (a second relay, or a standby that took over); stopping without publishing more`,
        err,
      );
      this.events.fenced();
      return this.fencedBy;
    }
    return client.classify(err, doing);
  }

  /** After a failed publish: a fresh producer (fenced again before use). */
  async reset(): Promise<void> {
    await this.drop();
  }

  private async drop(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    this.initialized = false;
    this.stopReporting();
    if (p) await p.disconnect().catch(() => undefined);
  }

  partitionOf(m: OutboxMessage): number | null {
    return kafkajsPartitionOf(m.destination, m.key);
  }

  async close(): Promise<void> {
    await this.drop();
    await this.topics.close();
  }
}
