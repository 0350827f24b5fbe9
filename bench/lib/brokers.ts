import amqp from 'amqplib';
import kafkajs from 'kafkajs';

/**
 * The orchestrator's own broker connections: creates the topic / exchange + queue a consumer
 * publishes to, counts what arrived, and removes it afterwards (a 1M-message queue or topic per
 * run would otherwise pile up).
 */
export class BrokerAdmin {
  private kafkaAdmin: kafkajs.Admin | null = null;
  private amqpConn: amqp.ChannelModel | null = null;
  private ch: amqp.Channel | null = null;

  constructor(
    readonly kafkaBrokers: string[] | null,
    readonly amqpUrl: string | null,
  ) {}

  async open(): Promise<void> {
    if (this.kafkaBrokers) {
      const kafka = new kafkajs.Kafka({ clientId: 'outboxd-bench-admin', brokers: this.kafkaBrokers, logLevel: kafkajs.logLevel.NOTHING });
      this.kafkaAdmin = kafka.admin();
      await this.kafkaAdmin.connect();
    }
    if (this.amqpUrl) {
      this.amqpConn = await amqp.connect(this.amqpUrl);
      this.amqpConn.on('error', () => undefined);
      this.ch = await this.amqpConn.createChannel();
      this.ch.on('error', () => undefined);
    }
  }

  async close(): Promise<void> {
    await this.kafkaAdmin?.disconnect().catch(() => undefined);
    await this.amqpConn?.close().catch(() => undefined);
  }

  private kadmin(): kafkajs.Admin {
    if (!this.kafkaAdmin) throw new Error('no Kafka in this run');
    return this.kafkaAdmin;
  }

  private channel(): amqp.Channel {
    if (!this.ch) throw new Error('no RabbitMQ in this run');
    return this.ch;
  }

  async createTopic(topic: string, partitions: number, configEntries: Array<{ name: string; value: string }> = []): Promise<void> {
    await this.kadmin().createTopics({
      topics: [{ topic, numPartitions: partitions, replicationFactor: 1, configEntries }],
      waitForLeaders: true,
    });
  }

  /** An exactly-once checkpoint topic: one partition, compacted (what `outboxd setup` creates). */
  async createCheckpointTopic(topic: string): Promise<void> {
    await this.createTopic(topic, 1, [{ name: 'cleanup.policy', value: 'compact' }]);
  }

  /** Messages in the topic (sum over partitions of high - low watermark). */
  async topicCount(topic: string): Promise<number> {
    const offsets = await this.kadmin().fetchTopicOffsets(topic);
    return offsets.reduce((n, p) => n + Number(p.high) - Number(p.low), 0);
  }

  async deleteTopic(topic: string): Promise<void> {
    await this.kadmin()
      .deleteTopics({ topics: [topic], timeout: 30_000 })
      .catch(() => undefined);
  }

  /** A durable topic exchange and one durable queue bound to everything on it. */
  async createQueue(name: string): Promise<void> {
    const ch = this.channel();
    await ch.assertExchange(name, 'topic', { durable: true });
    await ch.assertQueue(name, { durable: true });
    await ch.bindQueue(name, name, '#');
  }

  /**
   * A RabbitMQ layout under one name: `classic`, a durable topic exchange bound (`#`) to one
   * classic queue (createQueue); `quorum`, the same with a quorum queue; `hash4`, a durable
   * x-consistent-hash exchange over four classic queues NAME.0..3, each bound with weight 1.
   */
  async createLayout(name: string, layout: RabbitLayout): Promise<void> {
    const ch = this.channel();
    if (layout === 'classic') return this.createQueue(name);
    if (layout === 'quorum') {
      await ch.assertExchange(name, 'topic', { durable: true });
      await ch.assertQueue(name, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
      await ch.bindQueue(name, name, '#');
      return;
    }
    await ch.assertExchange(name, 'x-consistent-hash', { durable: true });
    for (const q of hashQueues(name)) {
      await ch.assertQueue(q, { durable: true });
      await ch.bindQueue(q, name, '1');
    }
  }

  async layoutCount(name: string, layout: RabbitLayout): Promise<number> {
    if (layout !== 'hash4') return this.queueCount(name);
    let n = 0;
    for (const q of hashQueues(name)) n += await this.queueCount(q);
    return n;
  }

  async deleteLayout(name: string, layout: RabbitLayout): Promise<void> {
    if (layout !== 'hash4') return this.deleteQueue(name);
    for (const q of hashQueues(name))
      await this.channel()
        .deleteQueue(q)
        .catch(() => undefined);
    await this.channel()
      .deleteExchange(name)
      .catch(() => undefined);
  }

  async queueCount(name: string): Promise<number> {
    return (await this.channel().checkQueue(name)).messageCount;
  }

  async deleteQueue(name: string): Promise<void> {
    const ch = this.channel();
    await ch.deleteQueue(name).catch(() => undefined);
    await ch.deleteExchange(name).catch(() => undefined);
  }
}

export type RabbitLayout = 'classic' | 'quorum' | 'hash4';

const hashQueues = (name: string): string[] => [0, 1, 2, 3].map((i) => `${name}.${i}`);
