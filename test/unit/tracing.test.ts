import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { PoisonError } from '../../src/errors.js';
import type { OutboxMessage, Sink, TxnRef } from '../../src/interfaces.js';
import { createLogger } from '../../src/observability/logger.js';
import { clearSecrets, redact } from '../../src/redact.js';
import { SdkTracer } from '../../src/observability/tracing-sdk.js';
import { loadTracing } from '../../src/observability/tracing.js';

/**
 * The relay's spans, with the SDK's in-memory exporter: which messages get one, its parent, kind,
 * times and attributes, the traceparent that goes out, the batch span's links, and how each
 * outcome of a publish ends them. The end-to-end tests (test/integration/tracing.test.ts) do the
 * same through Postgres and Kafka.
 */

/** Keeps what it was given when the provider shuts down (the SDK's own clears it). */
class KeptSpans extends InMemorySpanExporter {
  override shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

const PARENT_TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT_SPAN = '00f067aa0ba902b7';
const SAMPLED = `00-${PARENT_TRACE}-${PARENT_SPAN}-01`;
const UNSAMPLED = `00-${PARENT_TRACE}-${PARENT_SPAN}-00`;
const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-(0[01])$/;

const COMMIT_MS = Date.UTC(2026, 0, 2, 3, 4, 5, 678);
const txn: TxnRef = { xid: 42, commitLsn: 0x1000n, commitTimeMs: COMMIT_MS, lsnText: '0/1000', xidText: '42' };

function message(id: string, headers: Record<string, string>, destination = 'orders.created'): OutboxMessage {
  return {
    id,
    destination,
    key: `key-${id}`,
    aggregateType: 'orders',
    type: 'created',
    payload: '{}',
    contentType: 'application/json',
    headers: { id, ...headers },
    correlationId: null,
    replyTo: null,
    txn,
    index: 0,
    sizeBytes: 100,
  };
}

const YAML = {
  rabbitmq: 'sink:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://h\n    exchange: outbox\n',
  kafka: 'sink:\n  type: kafka\n  kafka:\n    brokers: [k:9092]\n    workers: 0\n',
};

function tracer(sink: 'rabbitmq' | 'kafka', partitionOf: Sink['partitionOf'] = () => 2) {
  const cfg = parseConfig(`postgres:\n  url: postgres://u@h/db\n${YAML[sink]}telemetry:\n  traces:\n    enabled: true\n`, {});
  const exporter = new KeptSpans();
  const instance = { type: sink, partitionOf } as unknown as Sink;
  const t = new SdkTracer(cfg.telemetry.traces, cfg.sink, instance, createLogger('silent'), exporter);
  const spans = async (): Promise<ReadableSpan[]> => {
    await t.close();
    return exporter.getFinishedSpans();
  };
  return { t, spans };
}

describe('SdkTracer', () => {
  it('gives a traced message a PRODUCER span, child of its traceparent, from its commit, and sends the span on as its traceparent', async () => {
    const { t, spans } = tracer('rabbitmq');
    const original = message('m1', { traceparent: SAMPLED, tracestate: 'congo=t61rcWkgMzE,rojo=00f067aa0ba902b7' });
    const out = t.start(original);
    expect(original.headers.traceparent, 'the original is left alone').toBe(SAMPLED);
    t.publishing([out])?.confirmed({ poisoned: [] });
    const [create, send] = await spans();
    expect(create?.name).toBe('create outbox');
    expect(create?.kind).toBe(SpanKind.PRODUCER);
    expect(create?.parentSpanContext?.traceId).toBe(PARENT_TRACE);
    expect(create?.parentSpanContext?.spanId).toBe(PARENT_SPAN);
    expect(create?.parentSpanContext?.isRemote).toBe(true);
    expect(create?.spanContext().traceState?.serialize()).toBe('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7');
    expect(create?.startTime).toEqual([Math.floor(COMMIT_MS / 1000), (COMMIT_MS % 1000) * 1e6]);
    expect(create?.attributes).toMatchObject({
      'messaging.system': 'rabbitmq',
      'messaging.system.name': 'rabbitmq',
      'messaging.operation.type': 'create',
      'messaging.destination.name': 'outbox',
      'rabbitmq.destination.routing_key': 'orders.created',
      'messaging.message.id': 'm1',
      'outboxd.lsn': '0/1000',
      'outboxd.xid': '42',
    });
    expect(create?.resource.attributes['service.name']).toBe('outboxd');
    // What goes out is the span's own context; the row's tracestate goes on as written.
    const { traceId, spanId } = create?.spanContext() ?? {};
    expect(out.headers.traceparent).toBe(`00-${traceId}-${spanId}-01`);
    expect(spanId).not.toBe(PARENT_SPAN);
    expect(out.headers.tracestate).toBe('congo=t61rcWkgMzE,rojo=00f067aa0ba902b7');
    expect(send?.name).toBe('publish outbox');
    expect(send?.attributes['messaging.operation.type']).toBe('send');
  });

  it('records nothing under an unsampled parent, yet sends a new span id on, flagged unsampled', async () => {
    const { t, spans } = tracer('kafka');
    const out = t.start(message('m1', { traceparent: UNSAMPLED }));
    const [, traceId, spanId, flags] = TRACEPARENT.exec(out.headers.traceparent ?? '') ?? [];
    expect(traceId).toBe(PARENT_TRACE);
    expect(spanId).not.toBe(PARENT_SPAN);
    expect(flags).toBe('00');
    expect(t.publishing([out]), 'no batch span for untraced batches').toBeNull();
    expect(await spans()).toEqual([]);
  });

  it('leaves a message without a valid traceparent exactly as it came', async () => {
    const { t, spans } = tracer('kafka');
    const none = message('m1', {});
    const invalid = message('m2', { traceparent: '00-00000000000000000000000000000000-00f067aa0ba902b7-01' });
    const garbage = message('m3', { traceparent: 'not a traceparent' });
    for (const m of [none, invalid, garbage]) expect(t.start(m)).toBe(m);
    expect(t.publishing([none, invalid, garbage])).toBeNull();
    expect(await spans()).toEqual([]);
  });

  it('sends a batch under one CLIENT send span linked to each create span; the outcome ends each message span its way', async () => {
    const { t, spans } = tracer('kafka', (m) => (m.id === 'ok' ? 2 : null));
    const ok = t.start(message('ok', { traceparent: SAMPLED }));
    const refused = t.start(message('refused', { traceparent: SAMPLED }));
    const later = t.start(message('later', { traceparent: SAMPLED }));
    const plain = t.start(message('plain', {}));
    const batch = [ok, plain, refused, later];
    t.publishing(batch)?.confirmed({ poisoned: [{ index: 2, error: new PoisonError('oversized', 'too big') }], unsent: [3] });
    // The unsent one goes in a batch of its own later.
    t.publishing([later])?.confirmed({ poisoned: [] });
    const all = await spans();
    const creates = new Map(all.filter((s) => s.kind === SpanKind.PRODUCER).map((s) => [s.attributes['messaging.message.id'], s]));
    const sends = all.filter((s) => s.kind === SpanKind.CLIENT);
    expect([...creates.keys()].sort()).toEqual(['later', 'ok', 'refused']);
    expect(sends).toHaveLength(2);
    const first = sends[0] as ReadableSpan;
    expect(first.name).toBe('send orders.created');
    expect(first.parentSpanContext).toBeUndefined();
    expect(first.attributes).toMatchObject({
      'messaging.system': 'kafka',
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'send',
      'messaging.destination.name': 'orders.created',
      'messaging.batch.message_count': 4,
      'error.type': 'poisoned_messages',
    });
    expect(first.links.map((l) => l.context.spanId).sort()).toEqual(
      ['ok', 'refused', 'later'].map((id) => creates.get(id)?.spanContext().spanId).sort(),
    );
    expect(creates.get('ok')?.attributes['messaging.destination.partition.id']).toBe('2');
    expect(creates.get('ok')?.attributes['kafka.message.key']).toBe('key-ok');
    expect(creates.get('ok')?.status.code).toBe(SpanStatusCode.UNSET);
    expect(creates.get('refused')?.status).toEqual({ code: SpanStatusCode.ERROR, message: 'too big' });
    expect(creates.get('refused')?.attributes['error.type']).toBe('oversized');
    // The unsent message's span stayed open (a closed one gets no link) until its own batch.
    const second = sends[1] as ReadableSpan;
    expect(second.links.map((l) => l.context.spanId)).toEqual([creates.get('later')?.spanContext().spanId]);
  });

  it('names no destination on a batch over several topics', async () => {
    const { t, spans } = tracer('kafka');
    const batch = [t.start(message('a', { traceparent: SAMPLED }, 't1')), t.start(message('b', { traceparent: SAMPLED }, 't2'))];
    t.publishing(batch)?.confirmed({ poisoned: [] });
    const send = (await spans()).find((s) => s.kind === SpanKind.CLIENT);
    expect(send?.name).toBe('send');
    expect(send?.attributes['messaging.destination.name']).toBeUndefined();
  });

  it('ends a failed batch span with the error, and keeps its messages spans open for the retry', async () => {
    const { t, spans } = tracer('kafka');
    const m = t.start(message('m1', { traceparent: SAMPLED }));
    t.publishing([m])?.failed(new Error('broker gone'));
    const all = await spans();
    expect(all).toHaveLength(1);
    expect(all[0]?.kind).toBe(SpanKind.CLIENT);
    expect(all[0]?.status).toEqual({ code: SpanStatusCode.ERROR, message: 'broker gone' });
  });

  it('starts no span before the commit: a commit time ahead of this clock is clamped to now', async () => {
    const { t, spans } = tracer('kafka');
    const future = { ...message('m1', { traceparent: SAMPLED }), txn: { ...txn, commitTimeMs: Date.now() + 60_000 } };
    t.publishing([t.start(future)])?.confirmed({ poisoned: [] });
    const create = (await spans()).find((s) => s.kind === SpanKind.PRODUCER) as ReadableSpan;
    const ns = (h: readonly [number, number]) => BigInt(h[0]) * 1_000_000_000n + BigInt(h[1]);
    expect(ns(create.endTime)).toBeGreaterThanOrEqual(ns(create.startTime));
  });
});

describe('telemetry.traces', () => {
  const base = 'postgres:\n  url: postgres://u@h/db\n';

  it('is off by default, and then loads nothing', async () => {
    const cfg = parseConfig(base, {});
    expect(cfg.telemetry.traces).toEqual({
      enabled: false,
      endpoint: 'http://localhost:4318/v1/traces',
      serviceName: 'outboxd',
      headers: {},
      batchDelayMs: 5_000,
      exportTimeoutMs: 10_000,
      maxQueueSize: 2_048,
    });
    expect(await loadTracing(cfg.telemetry.traces, cfg.sink, createLogger('silent'))).toBeNull();
  });

  it('takes headers with secrets from the environment and redacts their values', () => {
    clearSecrets();
    const cfg = parseConfig(
      `${base}telemetry:\n  traces:\n    enabled: true\n    headers:\n      - name: Authorization\n        value: Bearer \${OTLP_TOKEN}\n`,
      { OTLP_TOKEN: 's3cr3t-token' },
    );
    expect(cfg.telemetry.traces.headers).toEqual({ Authorization: 'Bearer s3cr3t-token' });
    expect(redact('exporting with Bearer s3cr3t-token failed')).toBe('exporting with *** failed');
  });

  it.each([
    ['endpoint: localhost:4318', 'telemetry.traces.endpoint: must be an http:// or https:// URL, got localhost:'],
    ['endpoint: not a url', 'telemetry.traces.endpoint: is not a valid URL: "not a url"'],
    ['headers: [{ name: "bad name", value: x }]', 'telemetry.traces.headers[0].name: "bad name" is not an HTTP header name'],
    [
      'headers: [{ name: api-key, value: a }, { name: API-Key, value: b }]',
      'telemetry.traces.headers[1].name: header API-Key is listed twice',
    ],
    ['batchDelay: 5', 'telemetry.traces.batchDelay'],
    ['sampler: always', 'telemetry.traces.sampler: unknown key'],
  ])('refuses %s with one line naming the key', (line, error) => {
    expect(() => parseConfig(`${base}telemetry:\n  traces:\n    ${line}\n`, {})).toThrow(error);
  });
});

describe('the OpenTelemetry SDK', () => {
  it('is imported at run time by tracing-sdk.ts alone (which is itself only imported dynamically)', () => {
    const root = join(import.meta.dirname, '../../src');
    const files = readdirSync(root, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    const runtime = /^import\s+(?!type\b)[^;]*?from\s+'@opentelemetry\//m;
    const importers = files.filter((f) => runtime.test(readFileSync(join(root, f), 'utf8')));
    expect(importers).toEqual(['observability/tracing-sdk.ts']);
    const staticSdk = /^import[^;]*?from\s+'\.\/tracing-sdk\.js'/m;
    expect(files.filter((f) => staticSdk.test(readFileSync(join(root, f), 'utf8')))).toEqual([]);
  });
});
