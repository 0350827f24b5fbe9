import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import type { OutboxMessage } from '../../interfaces.js';
import { MISSING_TOPIC, classify, missingTopics } from './client.js';
import { MAX_KNOWN_TOPICS, PartitionCounts } from './partition.js';
import { type KafkaCluster, internalCluster } from './kafkajs-cluster.js';

/** How long a topic's partition count is trusted (a topic can gain partitions). */
const METADATA_MAX_AGE_MS = 300_000;

/**
 * The partition counts of the topics the worker sink publishes to (docs/adr/0010), from the
 * cluster's metadata, for at most MAX_KNOWN_TOPICS topics: the counts of the topics used last,
 * and a metadata connection that asks about no more topics than that (kafkajs's Cluster keeps
 * every topic it was asked about, and asks about all of them on each refresh, so it is renewed).
 */
export class TopicPartitions {
  private readonly counts = new PartitionCounts(METADATA_MAX_AGE_MS);
  private cluster: KafkaCluster | null = null;
  /** Topics asked of `cluster` so far (counted once per ask). */
  private clusterTopics = 0;

  constructor(
    private readonly kafka: kafkajs.Kafka,
    private readonly cfg: KafkaSinkConfig,
    /** The sink's admin client, to name the missing topics when one is missing. */
    private readonly admin: () => kafkajs.Admin,
  ) {}

  /**
   * The partition count of each message's destination, from the cache or else the metadata.
   * Rejects with the missing topics named (missingTopics) or a classified SinkError.
   */
  async of(batch: readonly OutboxMessage[]): Promise<Map<string, number>> {
    const now = Date.now();
    const out = new Map<string, number>();
    const missing: string[] = [];
    for (const { destination: topic } of batch) {
      if (out.has(topic)) continue;
      const count = this.counts.get(topic, now);
      if (count !== undefined) out.set(topic, count);
      else if (!missing.includes(topic)) missing.push(topic);
    }
    if (missing.length === 0) return out;
    if (this.cluster !== null && this.clusterTopics + missing.length > MAX_KNOWN_TOPICS) await this.disconnect();
    if (this.cluster === null) {
      this.cluster = internalCluster(this.kafka, { allowAutoTopicCreation: this.cfg.autoCreateTopics });
      this.clusterTopics = 0;
    }
    const cluster = this.cluster;
    try {
      await cluster.connect();
      await cluster.addMultipleTargetTopics(missing);
      this.clusterTopics += missing.length;
      for (const topic of missing) {
        const count = cluster.findTopicPartitionMetadata(topic).length;
        if (count === 0) throw Object.assign(new Error(`no partitions for topic ${topic}`), { type: MISSING_TOPIC });
        this.counts.set(topic, count, now);
        out.set(topic, count);
      }
    } catch (err) {
      await this.disconnect();
      if ((err as { type?: string }).type === MISSING_TOPIC || /UNKNOWN_TOPIC_OR_PARTITION/.test(String((err as Error).message))) {
        throw await missingTopics(this.admin(), this.cfg, missing, err);
      }
      throw classify(err, 'reading Kafka topic metadata');
    }
    return out;
  }

  /** The topic's count as last known (for a trace span), or undefined. */
  peek(topic: string): number | undefined {
    return this.counts.peek(topic);
  }

  /** Forgets every count: the next publish reads fresh metadata. */
  clear(): void {
    this.counts.clear();
  }

  async disconnect(): Promise<void> {
    const cluster = this.cluster;
    this.cluster = null;
    if (cluster) await cluster.disconnect().catch(() => undefined);
  }
}
