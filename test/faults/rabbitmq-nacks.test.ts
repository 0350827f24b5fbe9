import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { until, writeOutbox } from '../integration/support.js';
import { bundle, type Delivered, orderAndDuplicates, waitDelivered } from './fixtures.js';
import { rabbitmqUrl } from '../harness/services.js';

/**
 * A real broker that refuses part of the traffic, with two batches at the broker at once (ADR
 * 0022): a second queue bound to the relay's exchange holds at most 2,500 messages and rejects
 * what comes past that (`x-overflow: reject-publish`), so the broker nacks those publishes while
 * the main queue still takes them. Nacked batches are retried, while the batch beside them may
 * be confirmed. In the refusing queue, every id arrives and every key keeps its order.
 *
 * The queue is drained while the relay waits between retries (its backoff is then 0.5-1 s), not
 * while a batch is being published: a queue that starts taking messages again in the middle of a
 * batch acks a later message of a key after it nacked an earlier one, and RabbitMQ's
 * reject-publish breaks per-key order that way whatever the publisher does (docs/runbook.md, "A
 * RabbitMQ queue that refuses messages").
 */
describe('RabbitMQ nacks with two batches at the broker', () => {
  it('a queue that refuses publishes past its length: nacked batches retried, each key in order, no id lost', async () => {
    await using b = await bundle({ kind: 'rabbitmq' });
    const tag = b.db.name.slice(2, 8);
    const model = await amqp.connect(await rabbitmqUrl());
    try {
      const ch = await model.createChannel();
      const queue = `full_${tag}`;
      await ch.assertExchange(`ex_${tag}`, 'topic', { durable: true });
      await ch.assertQueue(queue, { durable: true, arguments: { 'x-max-length': 2_500, 'x-overflow': 'reject-publish' } });
      await ch.bindQueue(queue, `ex_${tag}`, '#');

      const relay = b.start();
      await relay.ready();
      const rows = await writeOutbox(b.db.client, { total: 8_000, keys: 150, types: b.types });
      const nacks = () => relay.metric('outboxd_publish_errors_total', { reason: 'nack' });
      // Six nacks: the backoff has grown to 0.5-1 s. Then the moment of the next one, and 100 ms
      // for the nack of the batch beside it: the relay is between retries.
      await until('the broker nacks, six times', async () => (await nacks()) >= 6, 60_000);
      const seen = await nacks();
      await until('the next nack', async () => (await nacks()) > seen, 10_000, 5);
      await new Promise((r) => setTimeout(r, 100)); // pacing: into the backoff, not a wait for a state

      const got: Delivered[] = [];
      await ch.consume(
        queue,
        (msg) => {
          if (!msg) return;
          const key = String(msg.properties.headers?.aggregateid ?? '');
          const seq = (JSON.parse(msg.content.toString()) as { seq: number }).seq;
          got.push({
            id: String(msg.properties.messageId),
            key,
            seq,
            stream: queue,
            position: got.length,
            headers: {},
            value: msg.content,
          });
        },
        { noAck: true },
      );
      const want = new Set(rows.map((r) => r.id));
      await until(
        'every id in the refusing queue',
        async () => new Set(got.map((g) => g.id).filter((id) => want.has(id))).size === want.size,
        120_000,
      );
      expect(orderAndDuplicates(got).violations).toEqual([]);
      // And the main queue has them all, in order too.
      await waitDelivered(
        b.reader,
        rows.map((r) => r.id),
      );
      expect(orderAndDuplicates(b.reader.delivered()).violations).toEqual([]);
    } finally {
      await model.close().catch(() => undefined);
    }
  });
});
