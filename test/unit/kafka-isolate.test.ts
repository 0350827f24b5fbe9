import { describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { testMessage } from './messages.js';

/**
 * At least once, a send the broker refused in part (sink/kafka/at-least-once.ts): the refused
 * message is found by sending the chunk's messages one at a time, on a fresh producer. Where a
 * request of the failed send went unanswered, the old producer's sequence numbers for its
 * partitions were wound back (kafkajs-send.ts) while the broker may hold that batch: the broker
 * then refuses the old producer's next batch there as out of order, which is no message's fault
 * and would fail the whole batch. The fake below is that broker.
 */

interface FakeProducer {
  n: number;
  disconnected: boolean;
  sends: string[][];
}
const producers: FakeProducer[] = [];

const refusal = (type: string) => Object.assign(new Error(type), { type, retriable: false });

vi.mock('../../src/sink/kafka/client.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/sink/kafka/client.js')>();
  const kafka = {
    producer: () => {
      const p: FakeProducer = { n: producers.length + 1, disconnected: false, sends: [] };
      producers.push(p);
      return {
        connect: async () => undefined,
        disconnect: async () => {
          p.disconnected = true;
        },
        on: () => undefined,
        events: { DISCONNECT: 'producer.disconnect' },
        sendBatch: async ({ topicMessages }: { topicMessages: Array<{ messages: Array<{ key: string; value: Buffer }> }> }) => {
          const ids = topicMessages.flatMap((t) => t.messages.map((m) => String(m.key)));
          p.sends.push(ids);
          // The first producer's first send: one partition refused as too large, another
          // unanswered though appended. Anything it sends after that is out of order.
          if (p.n === 1) throw refusal(p.sends.length === 1 ? 'MESSAGE_TOO_LARGE' : 'OUT_OF_ORDER_SEQUENCE_NUMBER');
          if (ids.includes('big')) throw refusal('MESSAGE_TOO_LARGE');
        },
      };
    },
    admin: () => ({}),
  };
  return { ...real, createKafka: () => kafka };
});

const { KafkaSink } = await import('../../src/sink/kafka/at-least-once.js');

const msg = (i: number, key: string) => testMessage(i, key, 'topic');

describe('at-least-once: a message the broker refuses', () => {
  it('is found one message at a time on a fresh producer, not on the one whose sequence numbers are in doubt', async () => {
    const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [127.0.0.1:9092]\n', {});
    if (cfg.sink.type !== 'kafka') throw new Error('not kafka');
    const sink = new KafkaSink(cfg.sink.kafka, { debug() {}, info() {}, warn() {}, error() {} } as never);
    const outcome = await sink.publish([msg(0, 'a'), msg(1, 'big'), msg(2, 'b')]);
    expect(outcome.poisoned.map((p) => [p.index, p.error.reason])).toEqual([[1, 'oversized']]);
    const [first, second] = producers;
    expect(first?.sends).toEqual([['a', 'big', 'b']]);
    expect(first?.disconnected).toBe(true);
    expect(second?.sends).toEqual([['a'], ['big'], ['b']]);
    // The next batch goes out on the fresh producer too.
    await sink.publish([msg(3, 'c')]);
    expect(second?.sends.at(-1)).toEqual(['c']);
    expect(producers).toHaveLength(2);
  });
});
