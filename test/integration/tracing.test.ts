// First: the harness loads kafkajs too, and the grouper's per-send partition counts give the
// span its partition.
import './kafkajs-first.js';
import { randomUUID } from 'node:crypto';
import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { describe, expect, it } from 'vitest';
import { Relay } from '../../src/app.js';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { kafkaBrokers, pgUrl } from '../harness/services.js';
import { TestDb, TopicReader, defer, until } from './support.js';

/**
 * The span tree through a real relay: the Relay in this process (so the SDK's in-memory exporter
 * sees its spans) between a real Postgres 17 and a real Kafka broker, read back with an
 * independent consumer. Each traced row's span is the child of the row's traceparent, starts at
 * its commit, carries the messaging attributes (the partition the consumer saw), and is the
 * parent the consumer's traceparent names; its batch's send span links to it. An unsampled parent
 * exports nothing but still sends a new span id on; a row without a valid traceparent is sent as
 * written. (The worker-thread publisher runs in otel-collector.test.ts, as a process.)
 */

/** Keeps the spans when the relay shuts its tracer down (the SDK's own exporter clears them). */
class KeptSpans extends InMemorySpanExporter {
  override shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const hex = (n: number) => randomUUID().replaceAll('-', '').slice(0, n);

describe('traces through the relay (Postgres 17 → Kafka, in process)', () => {
  it('makes each traced row a producer span between its traceparent and the consumer, linked from its batch', async () => {
    await using db = await new TestDb(await pgUrl(17)).create();
    const brokers = await kafkaBrokers();
    await using reader = new TopicReader(brokers);
    const topic = `outbox.event.traced_${db.name.slice(2, 8)}`;
    await reader.createTopics([topic]);
    const cfg = parseConfig(
      `postgres:
  url: ${db.url}
  slot: ${db.slot}
  statusInterval: 1s
sink:
  type: kafka
  kafka:
    brokers: [${brokers.join(', ')}]
    workers: 0
http:
  host: 127.0.0.1
  port: 0
telemetry:
  traces:
    enabled: true
    batchDelay: 50ms
`,
      {},
    );
    const exporter = new KeptSpans();
    const relay = await Relay.create(cfg, createLogger('silent'), { spanExporter: exporter });
    await relay.start();
    await using _relay = defer(() => relay.stop());
    await until('the relay streaming', async () => relay.relayState === 'streaming', 60_000);
    await reader.start([topic]);

    const trace = hex(32);
    const sampled = { parentSpan: hex(16), ids: [randomUUID(), randomUUID(), randomUUID()] };
    const unsampled = { trace: hex(32), parentSpan: hex(16), id: randomUUID() };
    const invalid = { id: randomUUID(), traceparent: `00-${trace}-${hex(16)}-01-extra` };
    const plain = randomUUID();
    const withState = { id: randomUUID(), parentSpan: hex(16), tracestate: 'vendor=opaque-value,other=1' };
    const insert = `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, traceparent, headers)
                    VALUES ($1, $2, $3, 'Traced', '{}', $4, $5)`;
    const type = topic.slice('outbox.event.'.length);
    const before = Date.now();
    await db.client.query('BEGIN');
    for (const [i, id] of sampled.ids.entries())
      await db.client.query(insert, [id, type, `key-${i}`, `00-${trace}-${sampled.parentSpan}-01`, null]);
    await db.client.query(insert, [unsampled.id, type, 'key-u', `00-${unsampled.trace}-${unsampled.parentSpan}-00`, null]);
    await db.client.query(insert, [invalid.id, type, 'key-i', invalid.traceparent, null]);
    await db.client.query(insert, [plain, type, 'key-p', null, null]);
    // tracestate rides in the headers column; traceparent may too (here: the column's wins).
    await db.client.query(insert, [
      withState.id,
      type,
      'key-s',
      `00-${trace}-${withState.parentSpan}-01`,
      JSON.stringify({ tracestate: withState.tracestate }),
    ]);
    await db.client.query('COMMIT');
    const after = Date.now();
    const ids = [...sampled.ids, unsampled.id, invalid.id, plain, withState.id];
    await reader.waitForIds(ids);
    const consumed = new Map(reader.messages.map((m) => [m.headers.id as string, m]));

    // The spans are exported in batches: wait for all four create spans and their send span.
    const spans = (): ReadableSpan[] => exporter.getFinishedSpans();
    await until('the spans exported', async () => spans().filter((s) => s.kind === SpanKind.PRODUCER).length >= 4, 30_000);
    const creates = new Map(
      spans()
        .filter((s) => s.kind === SpanKind.PRODUCER)
        .map((s) => [s.attributes['messaging.message.id'], s]),
    );
    expect([...creates.keys()].sort()).toEqual([...sampled.ids, withState.id].sort());

    const parentOf = (id: string) => (id === withState.id ? withState.parentSpan : sampled.parentSpan);
    for (const [id, span] of creates) {
      const m = consumed.get(id as string);
      expect(m, `${id} consumed`).toBeDefined();
      expect(span.name).toBe(`create ${topic}`);
      expect(span.parentSpanContext).toMatchObject({ traceId: trace, spanId: parentOf(id as string), isRemote: true });
      expect(span.spanContext().traceId).toBe(trace);
      // The consumer continues from the relay's span, not from the writer's.
      expect(m?.headers.traceparent).toBe(`00-${trace}-${span.spanContext().spanId}-01`);
      expect(span.attributes).toMatchObject({
        'messaging.system': 'kafka',
        'messaging.operation.type': 'create',
        'messaging.destination.name': topic,
        'messaging.message.id': id,
        'messaging.destination.partition.id': String(m?.partition),
        'kafka.message.key': m?.key,
        'outboxd.lsn': m?.headers['outboxd.lsn'],
        'outboxd.xid': m?.headers['outboxd.xid'],
      });
      // From the commit (Postgres's clock, in ms) to the confirm.
      const startMs = span.startTime[0] * 1000 + span.startTime[1] / 1e6;
      const endMs = span.endTime[0] * 1000 + span.endTime[1] / 1e6;
      expect(startMs).toBeGreaterThanOrEqual(before - 1);
      expect(startMs).toBeLessThanOrEqual(after + 1);
      expect(endMs).toBeGreaterThanOrEqual(startMs);
    }
    expect(creates.get(withState.id)?.spanContext().traceState?.serialize()).toBe(withState.tracestate);
    expect(consumed.get(withState.id)?.headers.tracestate).toBe(withState.tracestate);

    // The batch: one send span per batch holding traced messages, linked to each create span.
    const sends = spans().filter((s) => s.kind === SpanKind.CLIENT);
    const linked = sends.flatMap((s) => s.links.map((l) => l.context.spanId));
    expect(linked.sort()).toEqual([...creates.values()].map((s) => s.spanContext().spanId).sort());
    for (const s of sends) {
      expect(s.name).toBe(`send ${topic}`);
      expect(s.parentSpanContext).toBeUndefined();
      expect(s.attributes['messaging.batch.message_count']).toBeGreaterThanOrEqual(s.links.length);
    }

    // Unsampled: nothing exported for that trace, but a new span id went on, still unsampled.
    expect(spans().filter((s) => s.spanContext().traceId === unsampled.trace)).toEqual([]);
    const sent = consumed.get(unsampled.id)?.headers.traceparent ?? '';
    expect(sent).toMatch(new RegExp(`^00-${unsampled.trace}-[0-9a-f]{16}-00$`));
    expect(sent).not.toContain(unsampled.parentSpan);
    // Not a valid traceparent, or none: the message goes out exactly as written.
    expect(consumed.get(invalid.id)?.headers.traceparent).toBe(invalid.traceparent);
    expect(consumed.get(plain)?.headers.traceparent).toBeUndefined();
  });
});
