import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import { type PoisonError, SinkError } from '../../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../interfaces.js';
import type { Logger } from '../../observability/logger.js';
import * as client from './client.js';
import { kafkajsPartitionOf } from './kafkajs-internals.js';

/**
 * Kafka at least once, through kafkajs: an idempotent producer with acks=all and one request in
 * flight, so per-partition order survives the client's internal retries. kafkajs's default
 * partitioner is Java-compatible murmur2, so a key lands on the same partition as from a Java
 * producer. A batch goes out as sequential sends (client.ts: chunks).
 */
export class KafkaSink implements Sink {
  readonly type = 'kafka' as const;
  private readonly kafka: kafkajs.Kafka;
  private producer: kafkajs.Producer | null = null;
  private readonly topics: client.TopicCheck;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
  ) {
    this.kafka = client.createKafka(cfg, log);
    this.topics = new client.TopicCheck(this.kafka, cfg);
  }

  async connect(): Promise<void> {
    await this.getProducer();
    this.onConnection(true);
  }

  private async getProducer(): Promise<kafkajs.Producer> {
    if (this.producer) return this.producer;
    const producer = await client.connectProducer(this.kafka, this.cfg, this.onConnection);
    producer.on(producer.events.DISCONNECT, () => this.onConnection(false));
    this.producer = producer;
    return producer;
  }

  check(m: OutboxMessage): PoisonError | null {
    return client.checkMessage(this.cfg, m);
  }

  partitionOf(m: OutboxMessage): number | null {
    return kafkajsPartitionOf(m.destination, m.key);
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    const poisoned: Array<{ index: number; error: PoisonError }> = [];
    for (const chunk of client.chunks(batch, this.cfg.maxMessageBytes)) await this.sendChunk(chunk, poisoned);
    this.onConnection(true);
    return { poisoned };
  }

  private async sendChunk(
    chunk: Array<{ index: number; m: OutboxMessage }>,
    poisoned: Array<{ index: number; error: PoisonError }>,
  ): Promise<void> {
    try {
      await this.send(
        await this.getProducer(),
        chunk.map((c) => c.m),
      );
    } catch (err) {
      if (client.protocolErrorType(err) === client.MISSING_TOPIC)
        throw await this.topics.missing(
          chunk.map((c) => c.m.destination),
          err,
        );
      if (!client.isMessageError(err)) throw client.classify(err, 'publishing to Kafka');
      // The broker (or the client) refused something in the chunk: find which messages, one at a
      // time, in order. An error that no single message reproduces is not the messages' fault.
      // On a fresh producer: where a request of the failed send went unanswered, its partitions'
      // sequence numbers were wound back (kafkajs-send.ts), and the broker may hold that batch
      // anyway; the old producer's next send there would be refused as out of order.
      await this.reset();
      const producer = await this.getProducer();
      let pinned = false;
      for (const { index, m } of chunk) {
        try {
          await this.send(producer, [m]);
        } catch (one) {
          if (!client.isMessageError(one)) throw client.classify(one, 'publishing to Kafka');
          pinned = true;
          poisoned.push({ index, error: client.refusedMessage(m, one) });
        }
      }
      if (!pinned && client.protocolErrorType(err) === undefined) {
        throw new SinkError('client_error', `publishing to Kafka: ${(err as Error).message}`, { retriable: false, cause: err });
      }
    }
  }

  private async send(producer: kafkajs.Producer, messages: readonly OutboxMessage[]): Promise<void> {
    await producer.sendBatch({ acks: -1, compression: client.compressionOf(this.cfg), topicMessages: client.topicMessages(messages) });
  }

  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    const producer = await this.getProducer();
    await client.sendDeadLetter(this.cfg, letter, this.topics, async (form) => {
      await producer.sendBatch({
        acks: -1,
        compression: client.compressionOf(this.cfg),
        topicMessages: [{ topic: this.cfg.deadLetterTopic, messages: [{ key: form.key, value: form.body, headers: form.headers }] }],
      });
    });
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
    await this.topics.close();
  }
}
