import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import type { RabbitMqSinkConfig } from '../../src/config/config.js';
import type { OutboxMessage } from '../../src/interfaces.js';
import { channelFrames } from '../../src/sink/rabbitmq/amqplib-internals.js';
import { RabbitMqSink, properties } from '../../src/sink/rabbitmq/sink.js';
import { rabbitmqUrl } from '../harness/services.js';

/**
 * outboxd's own basic.publish frames (encode.ts, ADR 0021) against a real RabbitMQ: every message
 * the sink publishes arrives as the same message published through amqplib's `publish()` arrives,
 * body, properties, headers and routing key, over one channel and three, with bodies of several
 * frames; and a real ConfirmChannel is the shape the door knows, so these went through it.
 */
function message(i: number, over: Partial<OutboxMessage> = {}): OutboxMessage {
  return {
    id: `id-${i}-${randomUUID()}`,
    destination: `orders.created.${i % 5}`,
    key: `order-${i % 13}`,
    aggregateType: 'order',
    type: i % 3 === 0 ? null : 'created',
    payload: i % 4 === 0 ? Buffer.from([0, 1, 2, 255, i & 0xff]) : `{"n":${i},"note":"ünïcödé ✓ ${'x'.repeat(i % 50)}"}`,
    contentType: i % 4 === 0 ? 'application/octet-stream' : 'application/json',
    headers: {
      id: `h${i}`,
      'outboxd.lsn': `0/${(0x16b3748 + i).toString(16).toUpperCase()}`,
      ...(i % 2 ? { traceparent: '00-a-b-01' } : {}),
    },
    correlationId: i % 2 ? `corr-${i}` : null,
    replyTo: i % 5 === 0 ? 'replies' : null,
    txn: { xid: i, commitLsn: 0n, commitTimeMs: 1_765_000_000_000 + i * 1000, lsnText: '0/0', xidText: String(i) } as never,
    index: i,
    sizeBytes: 100,
    ...over,
  };
}

type Seen = { routingKey: string; content: Buffer; properties: amqp.MessageProperties };

/** A topic exchange with a queue bound for everything, and what arrives on it, in order. */
async function exchangeWithQueue(ch: amqp.Channel, name: string): Promise<Seen[]> {
  await ch.assertExchange(name, 'topic', { durable: true });
  const q = (await ch.assertQueue('', { exclusive: true })).queue;
  await ch.bindQueue(q, name, '#');
  const seen: Seen[] = [];
  await ch.consume(
    q,
    (m) => {
      if (m) seen.push({ routingKey: m.fields.routingKey, content: m.content, properties: m.properties });
    },
    { noAck: true },
  );
  return seen;
}

describe('RabbitMQ: outboxd-encoded publishes against the broker', () => {
  it.each([1, 3])('arrive as amqplib-published ones do, over %i channel(s)', async (channels) => {
    const url = await rabbitmqUrl();
    const model = await amqp.connect(url);
    try {
      const ch = await model.createConfirmChannel();
      expect(channelFrames(ch)).not.toBeNull();
      const tag = randomUUID().slice(0, 8);
      const ours = await exchangeWithQueue(ch, `enc_ours_${tag}`);
      const theirs = await exchangeWithQueue(ch, `enc_amqplib_${tag}`);

      const batch = Array.from({ length: 200 }, (_, i) => message(i));
      batch.push(message(200, { payload: 'é'.repeat(200_000) })); // three frames of 128 KiB
      batch.push(message(201, { payload: Buffer.alloc(300_000, 9) }));
      batch.push(message(202, { payload: '' }));

      const cfg = {
        url,
        exchange: `enc_ours_${tag}`,
        exchangeType: 'topic',
        declare: false,
        channels,
        confirmTimeoutMs: 10_000,
        heartbeatSeconds: 30,
        connectionTimeoutMs: 10_000,
        maxMessageBytes: 16 << 20,
        deadLetterExchange: 'unused',
        authMechanism: 'plain',
      } as unknown as RabbitMqSinkConfig;
      const log = { debug() {}, info() {}, warn() {}, error() {} } as never;
      const status = { connection() {}, blocked() {}, transaction() {}, fenced() {} };
      const sink = new RabbitMqSink(cfg, false, log, status);
      try {
        expect((await sink.publish(batch)).poisoned).toEqual([]);
      } finally {
        await sink.close();
      }
      for (const m of batch) {
        const body = typeof m.payload === 'string' ? Buffer.from(m.payload) : m.payload;
        ch.publish(`enc_amqplib_${tag}`, m.destination, body, properties(m));
      }
      await ch.waitForConfirms();
      const deadline = Date.now() + 20_000;
      while ((ours.length < batch.length || theirs.length < batch.length) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      expect(ours).toHaveLength(batch.length);
      expect(theirs).toHaveLength(batch.length);
      const byId = (seen: Seen[]) => new Map(seen.map((s) => [String(s.properties.messageId), s]));
      const a = byId(ours);
      const b = byId(theirs);
      for (const m of batch) {
        const x = a.get(m.id) as Seen;
        const y = b.get(m.id) as Seen;
        expect(x.routingKey).toBe(y.routingKey);
        expect(x.content.equals(y.content)).toBe(true);
        expect(x.properties).toEqual(y.properties);
      }
      // And per key in batch order (a key keeps its channel).
      const order = new Map<string, string[]>();
      for (const s of ours) {
        const key = String(s.properties.headers?.aggregateid);
        order.set(key, [...(order.get(key) ?? []), String(s.properties.messageId)]);
      }
      for (const [key, ids] of order) expect(ids).toEqual(batch.filter((m) => m.key === key).map((m) => m.id));
    } finally {
      await model.close().catch(() => undefined);
    }
  });
});
