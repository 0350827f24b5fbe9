import './kafkajs-speedups.js'; // first: it must run before kafkajs loads
import kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../config/config.js';
import { type PoisonError, SinkError } from '../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import {
  MISSING_TOPIC,
  checkMessage,
  chunks,
  classify,
  compressionOf,
  createKafka,
  deadLetterCandidates,
  isMessageError,
  missingTopics,
  protocolErrorType,
  refusedMessage,
  topicMessages,
} from './kafka-client.js';

const { Partitioners } = kafkajs;

/**
 * Kafka at least once, through kafkajs: an idempotent producer with acks=all and one request in
 * flight, so per-partition order survives the client's internal retries. kafkajs's default
 * partitioner is Java-compatible murmur2, so a key lands on the same partition as from a Java
 * producer. A batch goes out as sequential sends (kafka-client.ts: chunks).
 */
export class KafkaSink implements Sink {
  readonly type = 'kafka' as const;
  private readonly kafka: kafkajs.Kafka;
  private producer: kafkajs.Producer | null = null;
  private admin: kafkajs.Admin | null = null;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
  ) {
    this.kafka = createKafka(cfg, log);
  }

  async connect(): Promise<void> {
    await this.getProducer();
    this.onConnection(true);
  }

  private async getProducer(): Promise<kafkajs.Producer> {
    if (this.producer) return this.producer;
    const producer = this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: this.cfg.autoCreateTopics,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    try {
      await producer.connect();
    } catch (err) {
      this.onConnection(false);
      await producer.disconnect().catch(() => undefined);
      throw classify(err, 'connecting to Kafka');
    }
    producer.on(producer.events.DISCONNECT, () => this.onConnection(false));
    this.producer = producer;
    return producer;
  }

  check(m: OutboxMessage): PoisonError | null {
    return checkMessage(this.cfg, m);
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    const poisoned: Array<{ index: number; error: PoisonError }> = [];
    const producer = await this.getProducer();
    for (const chunk of chunks(batch, this.cfg.maxMessageBytes)) await this.sendChunk(producer, chunk, poisoned);
    this.onConnection(true);
    return { poisoned };
  }

  private async sendChunk(
    producer: kafkajs.Producer,
    chunk: Array<{ index: number; m: OutboxMessage }>,
    poisoned: Array<{ index: number; error: PoisonError }>,
  ): Promise<void> {
    try {
      await this.send(
        producer,
        chunk.map((c) => c.m),
      );
    } catch (err) {
      if (protocolErrorType(err) === MISSING_TOPIC)
        throw await this.missing(
          chunk.map((c) => c.m.destination),
          err,
        );
      if (!isMessageError(err)) throw classify(err, 'publishing to Kafka');
      // The broker (or the client) refused something in the chunk: find which messages, one at a
      // time, in order. An error that no single message reproduces is not the messages' fault.
      let pinned = false;
      for (const { index, m } of chunk) {
        try {
          await this.send(producer, [m]);
        } catch (one) {
          if (!isMessageError(one)) throw classify(one, 'publishing to Kafka');
          pinned = true;
          poisoned.push({ index, error: refusedMessage(m, one) });
        }
      }
      if (!pinned && protocolErrorType(err) === undefined) {
        throw new SinkError('client_error', `publishing to Kafka: ${(err as Error).message}`, { retriable: false, cause: err });
      }
    }
  }

  private async send(producer: kafkajs.Producer, messages: readonly OutboxMessage[]): Promise<void> {
    await producer.sendBatch({ acks: -1, compression: compressionOf(this.cfg), topicMessages: topicMessages(messages) });
  }

  private missing(topics: readonly string[], cause: unknown): Promise<SinkError> {
    this.admin ??= this.kafka.admin();
    return missingTopics(this.admin, this.cfg, topics, cause);
  }

  /**
   * Sends the largest form of the dead letter that fits (dead-letter.ts): a form over
   * `maxMessageBytes` is skipped, and one the broker refuses as too large gives way to the next.
   */
  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    const producer = await this.getProducer();
    const doing = `publishing to dead-letter topic ${this.cfg.deadLetterTopic}`;
    const forms = deadLetterCandidates(letter, this.cfg.maxMessageBytes);
    for (const [i, form] of forms.entries()) {
      const last = i === forms.length - 1;
      try {
        await producer.sendBatch({
          acks: -1,
          topicMessages: [{ topic: this.cfg.deadLetterTopic, messages: [{ key: letter.key, value: form.body, headers: form.headers }] }],
        });
        return;
      } catch (err) {
        if (protocolErrorType(err) === MISSING_TOPIC) throw await this.missing([this.cfg.deadLetterTopic], err);
        if (!last && isMessageError(err)) continue;
        const e = classify(err, doing);
        if (last && isMessageError(err)) {
          throw new SinkError('dead_letter_refused', `${doing}: refused even without payload and headers: ${e.message}`, {
            retriable: false,
            cause: err,
          });
        }
        throw e;
      }
    }
  }

  /**
   * After a failed send the idempotent producer's sequence state may be stale (a broker lost a
   * batch, or the producer id expired); a fresh producer gets a new id and starts clean.
   */
  async reset(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    if (p) await p.disconnect().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.reset();
    const admin = this.admin;
    this.admin = null;
    if (admin) await admin.disconnect().catch(() => undefined);
  }
}
