import { createRequire } from 'node:module';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { crc32c } from '../../src/sink/kafka/crc32c.js';
import { type ProduceArgs, encodeProduce } from '../../src/sink/kafka/produce-encoder.js';
import { kafkajsProduce } from '../../src/sink/kafka/kafkajs-internals.js';

const require = createRequire(import.meta.url);
const kafkajsCrc = require('kafkajs/src/protocol/recordBatch/crc32C/index.js') as (b: Buffer) => number;
const Long = require('kafkajs/src/utils/long.js') as { fromValue(v: unknown): unknown; fromInt(n: number): unknown };

/** kafkajs's own bytes for the same request. */
async function theirs(args: ProduceArgs): Promise<Buffer> {
  return (await kafkajsProduce()(args).encode()).buffer;
}

const headers = (i: number) => ({
  id: `0190f0c2-7d1e-7b3a-9c1d-${String(i).padStart(12, '0')}`,
  type: 'OrderPlaced',
  aggregatetype: 'order',
  aggregateid: `key-${i}`,
  'outboxd.lsn': '0/1A2B3C8',
  'outboxd.xid': '742',
  correlation_id: 'c'.repeat(30),
  'content-type': 'application/json',
});

function request(
  messages: ProduceArgs['topicData'][number]['partitions'][number]['messages'],
  extra: Partial<ProduceArgs> = {},
): ProduceArgs {
  return {
    acks: -1,
    timeout: 30_000,
    transactionalId: null,
    producerId: Long.fromValue(4242) as ProduceArgs['producerId'],
    producerEpoch: 3,
    compression: 0,
    topicData: [
      {
        topic: 'outbox.event.order',
        partitions: [
          { partition: 0, firstSequence: 17, messages },
          { partition: 2, firstSequence: 0, messages: messages.slice(0, 1) },
        ],
      },
      { topic: 'outbox.event.ünïcode', partitions: [{ partition: 1, firstSequence: 5, messages: messages.slice(-2) }] },
    ],
    ...extra,
  };
}

describe('the Produce request encoder', () => {
  afterEach(() => vi.restoreAllMocks());

  it('writes kafkajs’s bytes for every shape of message', async () => {
    vi.spyOn(Date, 'now').mockReturnValue(1_796_040_000_123);
    const messages = [
      { key: 'key-1', value: JSON.stringify({ seq: 1, pad: 'x'.repeat(300) }), headers: headers(1) },
      { key: 'k', value: Buffer.from([0, 1, 2, 255]), headers: {} },
      { key: null, value: null },
      { key: 'ключ-🔑', value: 'ünïcode ✓ '.repeat(40), headers: { 'h-ü': 'v-✓', arr: ['a', 'b'], empty: '' } },
      { key: 'long-header', value: 'v', headers: { h: 'y'.repeat(21), g: 'z'.repeat(22), big: 'w'.repeat(9000) } },
      { key: 'many', value: 'x'.repeat(70_000), headers: Object.fromEntries(Array.from({ length: 70 }, (_, i) => [`h${i}`, `v${i}`])) },
      { key: Buffer.from('buf-key'), value: '', headers: headers(2) },
    ];
    for (const args of [
      request(messages),
      request(messages, { transactionalId: 'outboxd-slot', producerId: Long.fromValue('9007199254740993') as ProduceArgs['producerId'] }),
      request(messages.slice(1, 2), { producerId: Long.fromInt(-1) as ProduceArgs['producerId'], producerEpoch: 0, acks: 1 }),
    ]) {
      expect(encodeProduce(args).equals(await theirs(args))).toBe(true);
    }
    // Many small records: offset deltas over 63 take two varint bytes.
    const small = Array.from({ length: 300 }, (_, i) => ({ key: `k${i}`, value: `${i}`, headers: headers(i) }));
    expect(encodeProduce(request(small)).equals(await theirs(request(small)))).toBe(true);
  });

  it('computes CRC-32C as kafkajs does, at any alignment', () => {
    const b = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 7919) & 0xff));
    for (const [s, e] of [
      [0, 1000],
      [3, 997],
      [5, 6],
      [10, 10],
    ] as const) {
      expect(crc32c(b, s, e)).toBe(kafkajsCrc(b.subarray(s, e)));
    }
    expect(crc32c(Buffer.from('123456789'), 0, 9)).toBe(0xe3069283);
  });
});
