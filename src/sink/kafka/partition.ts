import { randomBytes } from 'node:crypto';

/**
 * The Java client's default partitioner, as kafkajs's DefaultPartitioner implements it: the
 * positive murmur2 hash of the key's UTF-8 bytes, modulo the topic's partition count. A key lands
 * on the same partition as from a Java producer, from kafkajs, and from any worker.
 *
 * kafkajs computes murmur2 with 64-bit BigInt arithmetic (0.8 s per million keys in the profile);
 * this is the same function in 32-bit integer arithmetic (test/unit/kafka-partition.test.ts
 * compares the two).
 */

const SEED = 0x9747b28c;
const M = 0x5bd1e995;

/** Where string keys are written as UTF-8 to be hashed: no Buffer per key. */
const scratch = Buffer.allocUnsafe(4096);

/** murmur2 of the key's UTF-8 bytes, as Java's Utils.murmur2 (a signed 32-bit int). */
export function murmur2(key: string | Buffer): number {
  if (typeof key !== 'string') return hash(key, key.length);
  // At most 3 bytes per UTF-16 unit.
  if (key.length * 3 > scratch.length) return murmur2(Buffer.from(key, 'utf8'));
  return hash(scratch, scratch.write(key, 0, 'utf8'));
}

export function partitionOf(key: string | Buffer, partitions: number): number {
  return (murmur2(key) & 0x7fffffff) % partitions;
}

/** A partitioner as kafkajs's producer takes it (`createPartitioner`). */
export type KafkajsPartitioner = () => (args: {
  topic: string;
  partitionMetadata: ReadonlyArray<{ partitionId: number; leader: number }>;
  message: { partition?: number | null; key?: string | Buffer | null };
}) => number;

/**
 * kafkajs's DefaultPartitioner, choice for choice, with this module's murmur2: the message's own
 * partition if it names one; else the key's (partitionOf); else round robin over the partitions
 * with a leader, from a random start per topic. kafkajs's computes murmur2 with 64-bit Long
 * objects and lists the partitions with a leader for every message, keyed or not: on a 1M-row
 * drain to Kafka that was 2.4 s of the relay's 15 s of CPU (bench/profile.ts).
 */
export const javaCompatiblePartitioner: KafkajsPartitioner = () => {
  const counters = new Map<string, number>();
  return ({ topic, partitionMetadata, message }) => {
    if (message.partition != null) return message.partition;
    const key = message.key;
    if (key != null) return partitionOf(typeof key === 'string' || Buffer.isBuffer(key) ? key : String(key), partitionMetadata.length);
    const next = ((counters.get(topic) ?? randomStart()) + 1) | 0;
    counters.set(topic, next);
    const available = partitionMetadata.filter((p) => p.leader >= 0);
    if (available.length > 0) return (available[(next & 0x7fffffff) % available.length] as { partitionId: number }).partitionId;
    return (next & 0x7fffffff) % partitionMetadata.length;
  };
};

function randomStart(): number {
  return randomBytes(4).readUInt32BE(0);
}

/** murmur2 of the first `length` bytes of `data`. */
function hash(data: Uint8Array, length: number): number {
  let h = (SEED ^ length) | 0;
  const length4 = length >> 2;
  for (let i = 0; i < length4; i++) {
    const i4 = i * 4;
    let k = (data[i4] as number) | ((data[i4 + 1] as number) << 8) | ((data[i4 + 2] as number) << 16) | ((data[i4 + 3] as number) << 24);
    k = Math.imul(k, M);
    k ^= k >>> 24;
    k = Math.imul(k, M);
    h = Math.imul(h, M) ^ k;
  }
  const tail = length & ~3;
  const rest = length & 3;
  if (rest === 3) h ^= (data[tail + 2] as number) << 16;
  if (rest >= 2) h ^= (data[tail + 1] as number) << 8;
  if (rest >= 1) h = Math.imul(h ^ (data[tail] as number), M);
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h;
}

/** How many topics' partition counts a Kafka sink keeps: about 2 MB at most. */
export const MAX_KNOWN_TOPICS = 10_000;

/**
 * Each topic's partition count, for at most `maxTopics` topics: the one used least recently is
 * forgotten first, and only looked up again when next needed. A destination template over the
 * rows' columns can name any number of topics; this stays bounded. A count is trusted for
 * `maxAgeMs` (a topic can gain partitions).
 */
export class PartitionCounts {
  /** In order of use, the least recent first (a Map iterates in insertion order). */
  private readonly counts = new Map<string, { count: number; at: number }>();

  constructor(
    private readonly maxAgeMs: number,
    private readonly maxTopics = MAX_KNOWN_TOPICS,
  ) {}

  get size(): number {
    return this.counts.size;
  }

  /** The topic's count if known within `maxAgeMs` of `now`; a use, that keeps it. */
  get(topic: string, now = Date.now()): number | undefined {
    const known = this.counts.get(topic);
    if (known === undefined) return undefined;
    this.counts.delete(topic);
    if (now - known.at >= this.maxAgeMs) return undefined;
    this.counts.set(topic, known);
    return known.count;
  }

  /** The topic's count as last known, however old; not a use (for a trace span's attribute). */
  peek(topic: string): number | undefined {
    return this.counts.get(topic)?.count;
  }

  set(topic: string, count: number, now = Date.now()): void {
    this.counts.delete(topic);
    this.counts.set(topic, { count, at: now });
    if (this.counts.size > this.maxTopics) {
      const oldest = this.counts.keys().next();
      if (!oldest.done) this.counts.delete(oldest.value);
    }
  }

  clear(): void {
    this.counts.clear();
  }
}
