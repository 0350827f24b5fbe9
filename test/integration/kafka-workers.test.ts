import { describe, expect, it } from 'vitest';
import { kafkaBrokers, pgUrl } from '../harness/services.js';
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
});
