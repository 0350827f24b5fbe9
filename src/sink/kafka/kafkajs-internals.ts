/**
 * Where outboxd changes kafkajs 2.2 (its last release) from inside, for speed, with the same
 * bytes and results:
 * - the Produce request's encoder (produce-encoder.ts), installed by install();
 * - `groupMessagesPerPartition`, replaced when this module loads (below);
 * and where it reaches kafkajs's internal Cluster (internalCluster), for what the public API lacks.
 *
 * Replaces, before kafkajs is loaded, one kafkajs function that costs the relay time in
 * proportion to the square of a send's messages: `groupMessagesPerPartition`, which copies the
 * partition's array once per message (1.3 s per million messages at 500 per send, in the CPU
 * profile of docs/benchmarks.md). The replacement returns the same object, in one pass.
 *
 * Import this module before anything imports kafkajs (a side-effect import at the top of the
 * modules that load it). If kafkajs was loaded first, nothing changes but the speed.
 */
import { Module, createRequire } from 'node:module';
import type kafkajs from 'kafkajs';
import { SinkError } from '../../errors.js';
import { PartitionCounts, partitionOf } from './partition.js';
import { PRODUCE_API_KEY, type ProduceFactory, encodeProduce, ours } from './produce-encoder.js';

type Grouper = (args: {
  topic: string;
  partitionMetadata: unknown[];
  messages: unknown[];
  partitioner: (a: { topic: string; partitionMetadata: unknown[]; message: unknown }) => number;
}) => Record<number, unknown[]>;

/**
 * Each topic's partition count as kafkajs last grouped a send for it: the count its partitioner
 * (murmur2 of the key, modulo the count) used. Set once per topic per send, for trace spans; the
 * topics sent to last.
 */
const partitionCounts = new PartitionCounts(Number.POSITIVE_INFINITY);

/**
 * The partition kafkajs's default partitioner sent a message with this topic and key to (the
 * same murmur2 as partition.ts), from the count of its last send to the topic; null before.
 */
export function kafkajsPartitionOf(topic: string, key: string): number | null {
  const count = partitionCounts.peek(topic);
  return count === undefined ? null : partitionOf(key, count);
}

const grouper: Grouper = ({ topic, partitionMetadata, messages, partitioner }) => {
  const result: Record<number, unknown[]> = {};
  if (partitionMetadata.length === 0) return result;
  if (partitionCounts.get(topic) !== partitionMetadata.length) partitionCounts.set(topic, partitionMetadata.length);
  for (const message of messages) {
    const partition = partitioner({ topic, partitionMetadata, message });
    let list = result[partition];
    if (list === undefined) {
      list = [];
      result[partition] = list;
    }
    list.push(message);
  }
  return result;
};

const require = createRequire(import.meta.url);
const version = (require('kafkajs/package.json') as { version: string }).version;
if (version.startsWith('2.2.')) {
  const path = require.resolve('kafkajs/src/producer/groupMessagesPerPartition.js');
  if (require.cache[path] === undefined) {
    const m = new Module(path);
    m.filename = path;
    m.loaded = true;
    m.exports = grouper;
    require.cache[path] = m;
  }
}

export const GROUPER = grouper;

// --- the Produce encoder ------------------------------------------------------------------------

const V3 = 'kafkajs/src/protocol/requests/produce/v3/request.js';
let original: ProduceFactory | null = null;

/** kafkajs's own Produce v3 request factory (for the tests' byte comparison, and fallbacks). */
export function kafkajsProduce(): ProduceFactory {
  if (original) return original;
  return require(V3) as ProduceFactory;
}

/**
 * Makes kafkajs's Produce requests use encodeProduce. Idempotent. Returns false (and changes
 * nothing) on a kafkajs other than 2.2.x.
 */
export function install(): boolean {
  if (original) return true;
  if (!version.startsWith('2.2.')) return false;
  const path = require.resolve(V3);
  const kafkajs = require(V3) as ProduceFactory;
  const mod = require.cache[path];
  if (!mod) return false;
  original = kafkajs;
  const faster: ProduceFactory = (args) => {
    if (!ours(args)) return kafkajs(args);
    return {
      apiKey: PRODUCE_API_KEY,
      apiVersion: 3,
      apiName: 'Produce',
      expectResponse: () => args.acks !== 0,
      encode: async () => {
        const buf = encodeProduce(args);
        // What kafkajs's request framing reads of an Encoder: `buf`, `buffer` and `size()`.
        return { buf, buffer: buf, size: () => buf.length };
      },
    };
  };
  mod.exports = faster;
  return true;
}

// --- kafkajs's internal Cluster ------------------------------------------------------------------

/** The parts of kafkajs's (internal) Cluster that outboxd uses. */
export interface KafkaCluster {
  connect(): Promise<void>;
  disconnect(): Promise<void>;
  addTargetTopic(topic: string): Promise<void>;
  addMultipleTargetTopics(topics: string[]): Promise<void>;
  findTopicPartitionMetadata(topic: string): Array<{ partitionId: number; leader: number }>;
  findLeaderForPartitions(topic: string, partitions: number[]): Record<string, number[]>;
  findBroker(r: { nodeId: string }): Promise<unknown>;
}

/**
 * A kafkajs Cluster built as `kafka` builds its own (the same brokers, TLS, SASL and logger), for
 * what kafkajs's public API lacks: metadata without a producer, exact reads of a partition.
 * kafkajs 2.2.4 is its last release; anything else fails loudly here.
 */
export function internalCluster(kafka: kafkajs.Kafka, opts: { allowAutoTopicCreation: boolean; isolationLevel?: number }): KafkaCluster {
  const symbol = Object.getOwnPropertySymbols(kafka).find((s) => s.description === 'private:Kafka:createCluster');
  if (!version.startsWith('2.2.') || symbol === undefined) {
    throw new SinkError('client_error', `outboxd needs kafkajs 2.2 internals; found kafkajs ${version}`, { retriable: false });
  }
  const create = (kafka as unknown as Record<symbol, (o: object) => KafkaCluster>)[symbol] as (o: object) => KafkaCluster;
  return create(opts);
}
