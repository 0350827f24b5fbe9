import { afterEach, describe, expect, it } from 'vitest';
import { TopicReader, until } from './support.js';
import { type Bundle, bundle, uuid } from '../faults/fixtures.js';
import { kafkaBrokers } from '../harness/services.js';

/**
 * With sink.kafka.autoCreateTopics false, a row for a topic that does not exist waits: it is
 * retried (the topic may be created), never made poison, /readyz counts it, and the log and a metric name
 * the topic. Once it is created the row is delivered.
 */
let b: Bundle | null = null;
const readers: TopicReader[] = [];
afterEach(async () => {
  for (const r of readers.splice(0)) await r.stop();
  await b?.cleanup();
  b = null;
});

describe('a missing Kafka topic', () => {
  it('waits, counted in /readyz and named in the log and outboxd_destination_missing, until the topic is created; never poison', async () => {
    b = await bundle({ kind: 'kafka', sinkExtra: '    autoCreateTopics: false\n' });
    const bb = b;
    const relay = bb.start();
    await relay.ready();
    const topic = `outbox.event.missing_${bb.db.name.slice(2, 10)}`;
    const id = uuid();
    await bb.db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', '{"n":1}')`,
      [id, topic.slice('outbox.event.'.length)],
    );
    const notReady = await until(
      'not ready, counting the topic',
      async () => {
        const r = await relay.http('/readyz');
        return r.status === 503 && r.body.includes('destination_missing') ? r.body : undefined;
      },
      30_000,
    );
    // The topic is rendered from the row: row data stays out of the unauthenticated body.
    expect(notReady).toMatch(/1 destination that does not exist and is not created \(destination_missing\)/);
    expect(notReady).not.toContain(topic);
    expect(await relay.metric('outboxd_destination_missing', { destination: topic })).toBe(1);
    expect(relay.stderr).toMatch(/does not exist and sink.kafka.autoCreateTopics is false: create it/);
    expect(await relay.metric('outboxd_poison_messages_total')).toBe(0);
    expect(relay.logLines().some((l) => typeof l.err === 'object' && JSON.stringify(l.err).includes(topic))).toBe(true);

    const reader = new TopicReader(await kafkaBrokers());
    readers.push(reader);
    await reader.createTopics([topic], 1);
    await reader.start([topic]);
    await reader.waitForIds([id], 60_000);
    expect(reader.messages.find((m) => m.headers.id === id)?.value).toBe('{"n": 1}');
    await until('ready again', async () => (await relay.http('/readyz')).status === 200, 30_000);
    expect(await relay.metric('outboxd_destination_missing', { destination: topic })).toBe(0);
  }, 120_000);
});
