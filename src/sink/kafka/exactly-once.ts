import type kafkajs from 'kafkajs';
import { type PublishedUpTo, describePosition } from '../../positions/published.js';
import type { KafkaSinkConfig } from '../../config/config.js';
import { type PoisonError, SinkError } from '../../errors.js';
import type { DeadLetter, OutboxMessage, Position, PublishOutcome, Sink, SinkSession } from '../../interfaces.js';
import type { Logger } from '../../observability/logger.js';
import type { DeadLetterForm } from '../dead-letter.js';
import type { SinkStatus } from '../status.js';
import { checkpointKey, checkpointMessage, foreignCheckpoint, positionOf, readCheckpoints } from './exactly-once-checkpoint.js';
import * as client from './client.js';
import { readCreatingCheckpointTopic } from './setup.js';
import { TransactionalId } from './transactional-id.js';
import { kafkajsPartitionOf } from './kafkajs-internals.js';

/**
 * Tests only (test/faults/exactly-once.test.ts): a pause before every Kafka commit, so a kill
 * leaves a transaction open (its records in the log, to be aborted), and one after it, before
 * the pipeline hears of it, so a kill lands between the Kafka commit and the slot confirm.
 */
const PAUSE_BEFORE_COMMIT_MS = Number(process.env.OUTBOXD_TEST_PAUSE_BEFORE_COMMIT_MS ?? 0);
const PAUSE_AFTER_COMMIT_MS = Number(process.env.OUTBOXD_TEST_PAUSE_AFTER_COMMIT_MS ?? 0);
const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What the exactly-once sink reports besides the connection (metrics). */
export type TransactionEvents = Pick<SinkStatus, 'transaction' | 'fenced'>;

/**
 * Kafka exactly once (docs/adr/0009). Each publish is one Kafka transaction (the batch that is
 * due and, while the relay is busy, those queued behind it: batchLimits): its messages and a
 * checkpoint record, the position (commit LSN, index, timeline) of its last event, in the
 * compacted checkpoint topic. A read_committed consumer sees a batch whole, with its checkpoint,
 * or not at all; on every start the relay reads the checkpoint and skips every event it proves
 * published (PublishedUpTo), so a crash anywhere (also between the Kafka commit and the slot
 * confirm) publishes nothing twice, and a failover to a standby that was behind skips nothing new.
 *
 * - Fencing: the producer's InitProducerId (at the start of every replication session, after the
 *   relay took the leader lock) bumps the epoch of `transactionalId`; a relay still holding the
 *   old epoch gets a fenced error on its next request. Before it publishes or fences anything
 *   again it must prove it still holds the leader lock (transactional-id.ts); a relay that
 *   cannot stops (FencedError, exit code 5).
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
  private readonly id: TransactionalId;
  private readonly topics: client.TopicCheck;
  /** The replication session this sink publishes for, from its readCheckpoint on. */
  private session: SinkSession | null = null;
  /** A transaction takes every batch that is queued, up to these (fewer transactions: less broker work per event). */
  readonly batchLimits: { readonly batchMaxMessages: number; readonly batchMaxBytes: number };

  constructor(
    private readonly cfg: KafkaSinkConfig,
    private readonly slot: string,
    /** The relay's one holder of the exactly-once position: read into at each session, advanced at each commit. */
    private readonly published: PublishedUpTo,
    private readonly log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
    private readonly events: TransactionEvents = { transaction: () => undefined, fenced: () => undefined },
  ) {
    this.kafka = client.createKafka(cfg, log);
    this.topics = new client.TopicCheck(this.kafka, cfg);
    this.transactionalId = cfg.transactionalId;
    this.batchLimits = { batchMaxMessages: cfg.transactionMaxMessages, batchMaxBytes: cfg.transactionMaxBytes };
    this.id = new TransactionalId(cfg.transactionalId, cfg.transactionTimeoutMs, {
      connect: async () => {
        const producer = await client.connectProducer(this.kafka, cfg, onConnection, {
          // Quick retries inside a transaction. The next transaction's first request often meets
          // CONCURRENT_TRANSACTIONS while the broker writes the previous one's markers (a
          // millisecond or two); kafkajs's default wait (200 ms) would cost that much per batch,
          // and even 10 ms was most of a transaction's time at 2,000 tx/s (bench latency). Waits
          // of 2, 3, 4.5, … ms, about 0.5 s in all: a transaction must not outlive
          // transactionTimeout in kafkajs's retries, the pipeline retries it whole.
          retry: { retries: 12, initialRetryTime: 2, multiplier: 1.5, maxRetryTime: 2_000 },
          transactionalId: cfg.transactionalId,
          transactionTimeout: cfg.transactionTimeoutMs,
        });
        onConnection(true);
        return producer;
      },
      disconnected: () => onConnection(false),
      fenced: () => events.fenced(),
    });
  }

  /** Connects a producer, without InitProducerId: a standby must not fence the leader. */
  async connect(): Promise<void> {
    await this.id.get();
    this.onConnection(true);
  }

  /**
   * Takes the transactional id (fencing any other holder) and reads this source's checkpoint into
   * `published`. The fence comes first: it settles the previous holder's last transaction
   * (committed or aborted), so the read that follows is final. The session's relay holds the
   * leader lock here (the session calls this after taking it).
   */
  async readCheckpoint(session: SinkSession): Promise<void> {
    const source = session.source;
    this.session = session;
    const key = checkpointKey(this.slot, source);
    // Before fencing anyone: is this id another database's? Then fencing would stop that relay.
    // (Up to the stable offset only: the previous holder's open transaction ends with our fence.)
    // A missing topic is created here when sink.kafka.autoCreateTopics allows (setup.ts).
    const stable = await readCreatingCheckpointTopic(this.cfg, this.log, () => this.read(key, 'stable'));
    const foreign = foreignCheckpoint(stable, source, this.cfg.checkpointTopic, this.transactionalId);
    if (foreign) throw foreign;
    await this.id.takeOver();
    const { mine } = await this.read(key);
    this.published.restart(source, mine?.position ?? null);
    this.id.settled();
    this.log.info(
      {
        checkpointTopic: this.cfg.checkpointTopic,
        key,
        checkpoint: describePosition(mine?.position ?? null),
        timeline: source.timeline,
        transactionalId: this.transactionalId,
      },
      mine ? 'exactly-once: resuming after the checkpoint' : 'exactly-once: no checkpoint yet; every event from the slot on is published',
    );
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

  check(m: OutboxMessage): PoisonError | null {
    return client.checkMessage(this.cfg, m);
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    await this.settleDoubt();
    // After a re-read, part of the batch may be in Kafka already: what the checkpoint proves is.
    const pending: number[] = [];
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      if (this.published.judge(m.txn.commitLsn, m.index) !== 'published') pending.push(i);
    }
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
    // After a failure inside this publish (isolate), the id is taken again only by the proven
    // leader, and the checkpoint re-read: should it now cover part of these, the batch is retried
    // whole, and publish() leaves out what it covers.
    if ((await this.settleDoubt()) && messages.some((m) => this.published.judge(m.txn.commitLsn, m.index) === 'published')) {
      throw new SinkError('checkpoint_moved', 'publishing to Kafka: the checkpoint, re-read, covers part of the batch; retrying it', {
        retriable: true,
      });
    }
    const last = messages[messages.length - 1] as OutboxMessage;
    const checkpoint = positionOf(last);
    const parts = single ? [messages.map((m, index) => ({ index, m }))] : client.chunks(messages, this.cfg.maxMessageBytes);
    let txn: kafkajs.Transaction | null = null;
    try {
      txn = await this.id.begin();
      for (let p = 0; p < parts.length; p++) {
        const part = parts[p] as Array<{ index: number; m: OutboxMessage }>;
        const topics = client.topicMessages(part.map((c) => c.m));
        // The checkpoint goes with the first send: its partition joins the transaction in the
        // same AddPartitionsToTxn as the first messages' (one round trip, not two). Where in the
        // transaction it sits does not matter; that it commits with the messages does.
        if (p === 0) topics.push(this.checkpointRecord(checkpoint));
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
      throw this.id.failure(err, 'publishing to Kafka');
    }
    await this.commit(txn, checkpoint);
    return null;
  }

  /** The checkpoint record of `p`, an event of this session: on its server's timeline. */
  private checkpointRecord(p: Position): kafkajs.TopicMessages {
    const session = this.session as SinkSession;
    return checkpointMessage(this.cfg.checkpointTopic, this.transactionalId, this.slot, session.source, p);
  }

  private async commit(txn: kafkajs.Transaction, checkpoint: Position): Promise<void> {
    if (PAUSE_BEFORE_COMMIT_MS > 0) await pause(PAUSE_BEFORE_COMMIT_MS);
    try {
      await txn.commit();
    } catch (err) {
      // The broker may have committed before the answer was lost: settle it before going on.
      this.id.doubtCommit();
      const failure = this.id.failure(err, 'committing the Kafka transaction');
      await this.id.drop();
      throw failure;
    }
    this.published.advance(checkpoint);
    this.events.transaction('committed');
    if (PAUSE_AFTER_COMMIT_MS > 0) await pause(PAUSE_AFTER_COMMIT_MS);
  }

  /** Aborts best-effort; the producer is dropped either way (a fresh one fences any leftover). */
  private async abort(txn: kafkajs.Transaction): Promise<void> {
    this.events.transaction('aborted');
    if (txn.isActive()) await txn.abort().catch(() => undefined);
    await this.id.drop();
  }

  /**
   * Before publishing after a failure (a dropped producer, an unknown commit outcome, a fenced
   * error): prove the lead, fence (which settles an unknown commit), re-read the checkpoint
   * (TransactionalId.settle). Resolves true when it re-read.
   */
  private async settleDoubt(): Promise<boolean> {
    const session = this.session;
    if (session === null) {
      throw new SinkError('client_error', 'exactly-once sink: publish before the checkpoint was read', { retriable: false });
    }
    const doubt = this.id.inDoubt;
    if (doubt === 'none') return false;
    return this.id.settle(session.stillLeader, async () => {
      const { mine } = await this.read(checkpointKey(this.slot, session.source)).catch((err: unknown) => {
        // The topic was there when the session started: missing now is the broker's moment.
        if (err instanceof SinkError && !err.retriable && err.reason === 'checkpoint_topic_missing') {
          throw new SinkError(err.reason, err.message, { retriable: true, cause: err });
        }
        throw err;
      });
      this.published.restart(session.source, mine?.position ?? null);
      // Quiet after a plain failure (the pipeline already warned of it); said after a doubt.
      if (doubt !== 'dropped') {
        this.log.info(
          { checkpoint: describePosition(mine?.position ?? null) },
          `exactly-once: checkpoint re-read as the leader after ${doubt === 'fenced' ? 'a fenced error' : 'an uncertain commit'}`,
        );
      }
    });
  }

  /**
   * The dead letter in a transaction with its own checkpoint: its largest form that fits
   * (dead-letter.ts), the next when the broker refuses one as too large.
   */
  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    await this.settleDoubt();
    const at: Position = { commitLsn: letter.txn.commitLsn, index: letter.index };
    if (this.published.judge(at.commitLsn, at.index) === 'published') return;
    const sent: { txn: kafkajs.Transaction | null } = { txn: null };
    const send = async (form: DeadLetterForm): Promise<void> => {
      // A form the broker refused dropped the producer: take the id again as the proven leader.
      if ((await this.settleDoubt()) && this.published.judge(at.commitLsn, at.index) === 'published') return;
      let txn: kafkajs.Transaction | null = null;
      try {
        txn = await this.id.begin();
        // The form's key, not the letter's: the smallest form leaves out a key too large to carry.
        const message = { key: form.key, value: form.body, headers: form.headers };
        await txn.sendBatch({
          acks: -1,
          compression: client.compressionOf(this.cfg),
          topicMessages: [{ topic: this.cfg.deadLetterTopic, messages: [message] }, this.checkpointRecord(at)],
        });
        sent.txn = txn;
      } catch (err) {
        if (txn) await this.abort(txn);
        throw err;
      }
    };
    await client.sendDeadLetter(this.cfg, letter, this.topics, send, (err, doing) => this.id.failure(err, doing));
    if (sent.txn) await this.commit(sent.txn, at);
  }

  /** After a failed publish: a fresh producer (fenced again before use). */
  async reset(): Promise<void> {
    await this.id.drop();
  }

  partitionOf(m: OutboxMessage): number | null {
    return kafkajsPartitionOf(m.destination, m.key);
  }

  async close(): Promise<void> {
    await this.id.close();
    await this.topics.close();
  }
}
