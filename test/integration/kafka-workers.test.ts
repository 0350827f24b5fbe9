import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { partitionOf } from '../../src/sink/kafka/partition.js';
import { startKafka } from '../harness/kafka.js';
import { kafkaBrokers, pgUrl } from '../harness/services.js';
import { until, within } from '../harness/wait.js';
import { RelayProcess, TestDb, TopicReader, kafkaConfig, orderAndDuplicates, ordered, writeConfig, writeOutbox } from './support.js';

/**
 * Kafka publishing workers start only for the partitions written to: a relay configured with
 * more workers than its topics have partitions runs no more worker threads than partitions, each
 * about 80 MB saved (sink/kafka/workers.ts, docs/adr/0010).
 */
describe('Kafka publishing workers', () => {
  it('start no more threads than the partitions written to, and deliver every row once', async () => {
    await using stack = new AsyncDisposableStack();
    const db = stack.use(await new TestDb(await pgUrl(15)).create());
    const type = `order_${db.name.slice(2, 8)}`;
    const topic = `outbox.event.${type}`;
    const brokers = await kafkaBrokers();
    const reader = stack.use(new TopicReader(brokers));
    await reader.createTopics([topic], 2);
    const cfg = stack.use(await writeConfig(kafkaConfig({ pgUrl: db.url, slot: db.slot, brokers, workers: 6 })));
    const relay = stack.use(new RelayProcess(cfg.file, cfg.port));
    await relay.ready();
    await reader.start([topic]);
    const rows = await writeOutbox(db.client, { total: 2_000, keys: 50, types: [type] });
    await reader.waitForIds(rows.map((r) => r.id));
    await reader.waitCaughtUp([topic]);

    expect(reader.messages).toHaveLength(rows.length);
    expect(orderAndDuplicates(reader.messages.map(ordered))).toMatchObject({ duplicates: 0, violations: [] });
    const partitions = new Set(reader.messages.map((m) => m.partition));
    expect(partitions.size).toBe(2);
    const started = relay.stderr.split('\n').filter((l) => l.includes('Kafka worker thread started'));
    // Each partition's owner is (topic hash + partition) mod workers: two partitions, two owners.
    expect(started).toHaveLength(partitions.size);

    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('a worker still starting when the relay stops (broker frozen): the stop does not hang, and nothing is lost', async () => {
    await using stack = new AsyncDisposableStack();
    // A broker of its own: this test freezes it.
    const kafka = await startKafka();
    stack.defer(() => kafka.destroy());
    const db = stack.use(await new TestDb(await pgUrl(15)).create());
    const type = `order_${db.name.slice(2, 8)}`;
    const topic = `outbox.event.${type}`;
    const reader = stack.use(new TopicReader(kafka.brokers));
    await reader.createTopics([topic], 2);
    const cfg = stack.use(await writeConfig(kafkaConfig({ pgUrl: db.url, slot: db.slot, brokers: kafka.brokers, workers: 2 })));
    const insert = (key: string) =>
      db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, 'Tested', '{}')`, [
        randomUUID(),
        type,
        key,
      ]);
    // Two keys on the topic's two partitions, so on the two workers (one per partition).
    const first = 'key-0';
    let second = 'key-1';
    for (let i = 1; partitionOf(second, 2) === partitionOf(first, 2); i++) second = `key-${i}`;

    const relay = stack.use(new RelayProcess(cfg.file, cfg.port));
    await relay.ready();
    await insert(first);
    await until('the first worker published', async () => (await relay.metric('outboxd_messages_published_total')) === 1, 60_000);
    kafka.pause();
    await insert(second); // its worker starts now, and cannot reach the frozen broker
    await until('the second row in flight', async () => (await relay.metric('outboxd_inflight_messages')) === 1, 60_000);
    relay.kill('SIGTERM');
    // shutdown.grace is 20 s; past it the sink is closed under the waiting batch, and the relay exits.
    const code = await within(relay.exited, 60_000, 'still running a minute after SIGTERM' as const);
    kafka.resume();
    expect(code).toBe(0);

    // The unconfirmed row comes again on the next start.
    await reader.start([topic]);
    const again = stack.use(new RelayProcess(cfg.file, cfg.port));
    await again.ready();
    await until('both rows on Kafka', async () => new Set(reader.messages.map((m) => m.key)).size === 2, 60_000);
    again.kill('SIGTERM');
    expect(await again.exited).toBe(0);
  });
});
