/**
 * Part of the kafkajs door (kafkajs-internals.ts installs it and checks kafkajs's version and
 * shape; test/unit/kafkajs-door.test.ts lists the door's files): kafkajs's internal Cluster (a
 * private symbol of `Kafka`) gives metadata without a producer, and its brokers' raw ListOffsets
 * and Fetch, with its internal `Batch`, give an exact read_committed read of a partition
 * (exactly-once-checkpoint.ts). Nothing here loads kafkajs but through kafkajsFile().
 */
import type kafkajs from 'kafkajs';
import { BATCH, CREATE_CLUSTER, installKafkajs, kafkajsFile } from './kafkajs-internals.js';

export interface FetchedRecord {
  offset: string;
  key: Buffer | null;
  value: Buffer | null;
  isControlRecord?: boolean;
}
type BatchClass = new (
  topic: string,
  fetchedOffset: string,
  data: object,
) => { messages: FetchedRecord[]; messagesWithinOffset: FetchedRecord[] };

/** The parts of a kafkajs (internal) Broker that outboxd uses. */
export interface KafkaBroker {
  listOffsets(r: object): Promise<{ responses: Array<{ partitions: Array<{ partition: number; errorCode: number; offset: string }> }> }>;
  fetch(r: object): Promise<{
    responses: Array<{ partitions: Array<{ partition: number; errorCode: number; lastStableOffset: string; messages: FetchedRecord[] }> }>;
  }>;
}

/** The parts of kafkajs's (internal) Cluster that outboxd uses. */
export interface KafkaCluster {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  addTargetTopic(topic: string): Promise<void>;
  addMultipleTargetTopics(topics: string[]): Promise<void>;
  findTopicPartitionMetadata(topic: string): Array<{ partitionId: number; leader: number }>;
  findLeaderForPartitions(topic: string, partitions: number[]): Record<string, number[]>;
  findBroker(r: { nodeId: string }): Promise<KafkaBroker>;
}

/**
 * A kafkajs Cluster built as `kafka` builds its own (the same brokers, TLS, SASL and logger), for
 * what kafkajs's public API lacks: metadata without a producer, exact reads of a partition.
 */
export function internalCluster(kafka: kafkajs.Kafka, opts: { allowAutoTopicCreation: boolean; isolationLevel?: number }): KafkaCluster {
  // installKafkajs() checked that `Kafka` has this symbol.
  installKafkajs();
  const symbol = Object.getOwnPropertySymbols(kafka).find((s) => s.description === CREATE_CLUSTER) as symbol;
  const create = (kafka as unknown as Record<symbol, (o: object) => KafkaCluster>)[symbol] as (o: object) => KafkaCluster;
  return create(opts);
}

/** The offset ListOffsets answers for the latest position of one partition, or undefined. */
export async function latestOffset(
  broker: KafkaBroker,
  topic: string,
  partition: number,
  isolationLevel: number,
): Promise<string | undefined> {
  const res = await broker.listOffsets({ isolationLevel, topics: [{ topic, partitions: [{ partition, timestamp: -1 }] }] });
  return res.responses[0]?.partitions[0]?.offset;
}

/** One read_committed Fetch of one partition, as kafkajs's consumer would read it. */
export interface CommittedFetch {
  readonly errorCode: number;
  readonly lastStableOffset: string;
  /** Committed data records at or after the offset asked for: no control records, no aborted ones. */
  readonly records: readonly FetchedRecord[];
  /** The offset after the last record at or after the offset asked for (control records count), or null if none. */
  readonly next: string | null;
}

/** Fetches one partition from `offset`, committed records only, waiting at most `maxWaitMs` for any. */
export async function fetchCommitted(
  broker: KafkaBroker,
  topic: string,
  partition: number,
  offset: string,
  maxWaitMs: number,
): Promise<CommittedFetch | undefined> {
  const Batch = kafkajsFile<BatchClass>(BATCH);
  const res = await broker.fetch({
    isolationLevel: 1,
    maxWaitTime: maxWaitMs,
    minBytes: 1,
    maxBytes: 8 << 20,
    topics: [{ topic, partitions: [{ partition, fetchOffset: offset, maxBytes: 8 << 20 }] }],
  });
  const data = res.responses[0]?.partitions[0];
  if (data === undefined) return undefined;
  if (data.errorCode !== 0) return { errorCode: data.errorCode, lastStableOffset: data.lastStableOffset, records: [], next: null };
  const batch = new Batch(topic, offset, data);
  const within = batch.messagesWithinOffset;
  const last = within[within.length - 1];
  return {
    errorCode: 0,
    lastStableOffset: data.lastStableOffset,
    records: batch.messages,
    next: last === undefined ? null : (BigInt(last.offset) + 1n).toString(),
  };
}
