import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { MAX_KNOWN_TOPICS, PartitionCounts, javaCompatiblePartitioner, murmur2, partitionOf } from '../../src/sink/kafka/partition.js';

const require = createRequire(import.meta.url);
const kafkajsMurmur2 = require('kafkajs/src/producer/partitioners/default/murmur2.js') as (key: string | Buffer) => number;

describe('the partitioner', () => {
  it('hashes every key as kafkajs (and the Java client) does', () => {
    const keys = ['', 'a', 'ab', 'abc', 'abcd', 'key-1', 'order-00042', 'ключ', '🔑 emoji', 'x'.repeat(1001), 'ünï'];
    for (let i = 0; i < 2000; i++) keys.push(`k-${i}-${(i * 2654435761) >>> 0}`);
    for (const k of keys) {
      expect(murmur2(k), k).toBe(kafkajsMurmur2(k));
      expect(murmur2(Buffer.from(k)), k).toBe(kafkajsMurmur2(Buffer.from(k)));
    }
  });

  it('matches the Java client on known keys', () => {
    // org.apache.kafka.common.utils.Utils.murmur2 of these UTF-8 bytes.
    expect(murmur2('21')).toBe(-973932308);
    expect(murmur2('foobar')).toBe(-790332482);
    expect(murmur2('a-little-bit-long-string')).toBe(-985981536);
    expect(partitionOf('foobar', 3)).toBe((-790332482 & 0x7fffffff) % 3);
  });
});

describe('the producer’s partitioner', () => {
  type Args = Parameters<ReturnType<typeof javaCompatiblePartitioner>>[0];
  const kafkajsDefault = (require('kafkajs') as { Partitioners: { DefaultPartitioner: () => (a: Args) => number } }).Partitioners
    .DefaultPartitioner;
  const metadata = (n: number, down: number[] = []) =>
    Array.from({ length: n }, (_, i) => ({ partitionId: i, leader: down.includes(i) ? -1 : 1 }));

  it('chooses what kafkajs’s DefaultPartitioner chooses for a key, a string or bytes, and for an explicit partition', () => {
    const ours = javaCompatiblePartitioner();
    const theirs = kafkajsDefault();
    for (const n of [1, 3, 7, 64]) {
      const partitionMetadata = metadata(n, [0]);
      for (let i = 0; i < 500; i++) {
        for (const key of [`key-${i}`, Buffer.from(`ключ-${i}`), `🔑${i}`]) {
          const args = { topic: 't', partitionMetadata, message: { key } };
          expect(ours(args)).toBe(theirs(args));
        }
        const explicit = { topic: 't', partitionMetadata, message: { key: `k${i}`, partition: i % n } };
        expect(ours(explicit)).toBe(i % n);
        expect(theirs(explicit)).toBe(i % n);
      }
    }
  });

  it('spreads keyless messages round robin over the partitions that have a leader', () => {
    const ours = javaCompatiblePartitioner();
    const partitionMetadata = metadata(4, [1]);
    const chosen = Array.from({ length: 9 }, () => ours({ topic: 't', partitionMetadata, message: { key: null } }));
    expect(new Set(chosen)).toEqual(new Set([0, 2, 3]));
    for (let i = 3; i < 9; i++) expect(chosen[i]).toBe(chosen[i - 3]);
    // No partition has a leader: still one of them.
    expect(ours({ topic: 'u', partitionMetadata: metadata(2, [0, 1]), message: {} })).toBeLessThan(2);
  });
});

describe('groupMessagesPerPartition, in one pass', () => {
  it('returns what kafkajs’s returns', async () => {
    const { GROUPER } = await import('../../src/sink/kafka/kafkajs-internals.js');
    // kafkajs 2.2.4's own, as written there.
    const theirs = ({ topic, partitionMetadata, messages, partitioner }: Parameters<typeof GROUPER>[0]) => {
      if (partitionMetadata.length === 0) return {};
      return messages.reduce<Record<number, unknown[]>>((result, message) => {
        const partition = partitioner({ topic, partitionMetadata, message });
        const current = result[partition] || [];
        return Object.assign(result, { [partition]: [...current, message] });
      }, {});
    };
    const messages = Array.from({ length: 1000 }, (_, i) => ({ key: `k${i}`, partition: (i * 7) % 5 }));
    const args = {
      topic: 't',
      partitionMetadata: [0, 1, 2, 3, 4],
      messages,
      partitioner: ({ message }: { message: unknown }) => (message as { partition: number }).partition,
    };
    expect(GROUPER(args)).toEqual(theirs(args));
    expect(GROUPER({ ...args, partitionMetadata: [] })).toEqual({});
  });
});

describe('the partition counts a Kafka sink keeps', () => {
  /** A topic's partition count, as the metadata would give it. */
  const countOf = (topic: string) => 1 + (murmur2(topic) & 0xff);

  it('stay bounded over many distinct destinations, keeping those used last, and give the right partitions', () => {
    const counts = new PartitionCounts(300_000);
    const t0 = 1_000_000;
    counts.set('orders', countOf('orders'), t0);
    let largest = 0;
    let ordersLost = 0;
    for (let i = 0; i < 5 * MAX_KNOWN_TOPICS; i++) {
      const topic = `outbox.event.tenant-${i}`;
      if (counts.get(topic, t0) === undefined) counts.set(topic, countOf(topic), t0);
      // One topic in steady use is never the least recently used one.
      if (counts.get('orders', t0) !== countOf('orders')) ordersLost++;
      largest = Math.max(largest, counts.size);
    }
    expect(largest).toBe(MAX_KNOWN_TOPICS);
    expect(ordersLost).toBe(0);
    expect(counts.get('outbox.event.tenant-0', t0)).toBeUndefined();
    const last = `outbox.event.tenant-${5 * MAX_KNOWN_TOPICS - 1}`;
    for (const key of ['k', 'order-42', 'ключ']) {
      expect(partitionOf(key, counts.get(last, t0) as number)).toBe(partitionOf(key, countOf(last)));
      expect(partitionOf(key, counts.get('orders', t0) as number)).toBe(partitionOf(key, countOf('orders')));
    }
  });

  it('forget a count once it is too old (a topic can gain partitions), and peek without a use', () => {
    const counts = new PartitionCounts(1000, 2);
    counts.set('a', 3, 0);
    counts.set('b', 5, 0);
    expect(counts.peek('a')).toBe(3); // not a use: 'a' stays the least recently used
    counts.set('c', 7, 10);
    expect([counts.peek('a'), counts.peek('b'), counts.peek('c')]).toEqual([undefined, 5, 7]);
    expect(counts.get('b', 999)).toBe(5);
    expect(counts.get('b', 1000)).toBeUndefined();
    expect(counts.size).toBe(1);
  });
});
