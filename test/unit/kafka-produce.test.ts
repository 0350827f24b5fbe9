import { createRequire } from 'node:module';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { crc32c, crc32cJs, nativeCrc32c } from '../../src/sink/kafka/crc32c.js';
import { type ProduceArgs, encodeProduce } from '../../src/sink/kafka/produce-encoder.js';
import { CODEC_ID, COMPRESSIONS, codecById } from '../../src/sink/kafka/codecs.js';
import { installKafkajs, kafkajsProduce } from '../../src/sink/kafka/kafkajs-internals.js';

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
      // Each side of every length the encoder writes differently: 22, 64 and 2730 UTF-16 units,
      // ASCII or not, and a string that turns non-ASCII late.
      ...[21, 22, 63, 64, 2729, 2730].flatMap((n) => [
        { key: 'a'.repeat(n), value: 'ü'.repeat(n), headers: { ['h'.repeat(n)]: '✓'.repeat(n), late: `${'x'.repeat(n - 1)}é` } },
        { key: '🔑'.repeat(Math.ceil(n / 2)), value: `${'v'.repeat(n)}`, headers: { s: `${'s'.repeat(Math.max(0, n - 2))}東` } },
      ]),
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

  it.each(COMPRESSIONS.filter((c) => c !== 'none'))(
    'writes kafkajs’s bytes for a %s batch, whose records decompress back',
    async (name) => {
      installKafkajs(); // kafkajs's codec table gets snappy, lz4 and zstd
      vi.spyOn(Date, 'now').mockReturnValue(1_796_040_000_123);
      const messages = Array.from({ length: 200 }, (_, i) => ({
        key: `key-${i % 7}`,
        value: JSON.stringify({ seq: i, name: 'ünïcode ✓ 東京', pad: 'x'.repeat(i * 3) }),
        headers: headers(i),
      }));
      const compression = CODEC_ID[name];
      for (const args of [request(messages, { compression }), request(messages, { compression, transactionalId: 'outboxd-slot' })]) {
        const ours = encodeProduce(args);
        expect(ours.equals(await theirs(args))).toBe(true);
        // The first batch's attributes carry the codec, and its records decompress to the plain batch's.
        const plain = encodeProduce({ ...args, compression: 0 });
        // transactional id, acks, timeout, topic count, topic, partition count, partition, record set size
        const at = 2 + (args.transactionalId?.length ?? 0) + 2 + 4 + 4 + 2 + 'outbox.event.order'.length + 4 + 4 + 4;
        const attributes = ours.readInt16BE(at + 8 + 4 + 4 + 1 + 4);
        expect(attributes & 7).toBe(compression);
        const recordsAt = at + 8 + 4 + 4 + 1 + 4 + 2 + 4 + 8 + 8 + 8 + 2 + 4 + 4;
        const batchEnd = at + 8 + 4 + ours.readInt32BE(at + 8);
        const plainEnd = at + 8 + 4 + plain.readInt32BE(at + 8);
        const codec = codecById(compression) as NonNullable<ReturnType<typeof codecById>>;
        expect(codec.decompress(ours.subarray(recordsAt, batchEnd)).equals(plain.subarray(recordsAt, plainEnd))).toBe(true);
        expect(batchEnd - recordsAt).toBeLessThan((plainEnd - recordsAt) / 2);
      }
    },
  );

  it.each([
    ['the chosen', crc32c],
    ['the JavaScript', crc32cJs],
  ] as const)('computes CRC-32C as kafkajs does, at any alignment: %s one', (_, crc32c) => {
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
    // Every start and length around the 4-byte boundaries of the memory, in a view that starts at an odd address.
    const big = Buffer.alloc(4096 + 3);
    for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 11;
    for (const view of [big, big.subarray(1), big.subarray(3)]) {
      for (let s = 0; s < 9; s++) {
        for (const n of [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 1000, 4000])
          expect(crc32c(view, s, s + n)).toBe(kafkajsCrc(view.subarray(s, s + n)));
      }
    }
  });

  it('computes CRC-32C natively on linux x64, where the relay image runs', () => {
    if (process.platform !== 'linux' || process.arch !== 'x64') return;
    expect(nativeCrc32c).not.toBeNull();
    expect(crc32c).not.toBe(crc32cJs);
  });
});
