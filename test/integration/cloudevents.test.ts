import { type CloudEvent, HTTP, Kafka, type KafkaMessage } from 'cloudevents';
import { describe, expect, it } from 'vitest';
import { type Bundle, type Delivered, type SinkKind, bundle, uuid, waitDelivered } from '../faults/fixtures.js';
import { OUTBOX_DDL } from './support.js';

/**
 * sink.cloudevents against real Kafka and RabbitMQ: each event read back by a consumer and
 * checked against the CloudEvents 1.0 spec's rules (required attributes, attribute names,
 * RFC 3339 time, specversion, the payload's exact bytes), and parsed by the official CloudEvents
 * JavaScript SDK (`cloudevents`) into the attributes and data that were written. The SDK has a
 * Kafka binding; it has none for AMQP, so a RabbitMQ message is handed to its HTTP binding with
 * each `cloudEvents:` property as the `ce-` header of the same attribute (binary), or the body
 * with its content type (structured), and the SDK parses and validates it.
 */

const SOURCE = '/outboxd/{aggregatetype}';
/** Three payload types: jsonb (the default table), text and bytea. */
const DDL = [
  OUTBOX_DDL,
  'CREATE TABLE public.outbox_text (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())',
  'CREATE TABLE public.outbox_bytes (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text, payload bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())',
];
const TABLES = ['public.outbox', 'public.outbox_text', 'public.outbox_bytes'];
/** RFC 3339 `date-time`. */
const RFC3339 = /^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$/;
/** Attribute names (spec.md, Attribute Naming Convention): a-z and 0-9; SHOULD NOT exceed 20. */
const ATTRIBUTE_NAME = /^[a-z0-9]{1,20}$/;
const STRUCTURED = 'application/cloudevents+json; charset=utf-8';

/** One event as written, and what the broker must carry for it. */
interface Written {
  id: string;
  key: string;
  type: string;
  aggregatetype: string;
  /** The body's bytes, as the broker must hold them in binary mode. */
  bytes: Buffer;
  contentType: string;
  /** What the SDK must give as `data`: JSON parsed, text as a string, bytes as bytes. */
  data: unknown;
  /** The exact text a structured envelope embeds as `data` (JSON), or null (a JSON string, or data_base64). */
  jsonText: string | null;
  /** Commit happened within [afterMs, beforeMs]. */
  notBeforeMs: number;
  notAfterMs: number;
}

/**
 * Writes one event of each kind, each in its own transaction: a jsonb row, a text row, a bytea
 * row, and a logical message whose JSON payload has digits and escapes only its exact text keeps.
 */
async function writeEvents(b: Bundle): Promise<Written[]> {
  const [alpha, beta] = b.types as [string, string];
  const out: Written[] = [];
  const tx = async (run: () => Promise<unknown>, w: Omit<Written, 'notBeforeMs' | 'notAfterMs'>) => {
    // Commit timestamps are ms-truncated server time: allow the second around the commit.
    const notBeforeMs = Date.now() - 1000;
    await run();
    out.push({ ...w, notBeforeMs, notAfterMs: Date.now() + 1000 });
  };
  const q = (sql: string, params: unknown[]) => () => b.db.client.query(sql, params);

  const jsonId = uuid();
  await tx(
    q(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, correlation_id) VALUES ($1, $2, 'order-1', 'com.example.placed', $3, 'corr-1')`,
      [jsonId, alpha, '{"total": 42.5, "items": [1, 2], "note": "caf\\u00e9 ✓"}'],
    ),
    {
      id: jsonId,
      key: 'order-1',
      type: 'com.example.placed',
      aggregatetype: alpha,
      contentType: 'application/json',
      bytes: Buffer.alloc(0),
      data: null,
      jsonText: null,
    },
  );
  // jsonb prints its own normalised text: the broker must carry exactly that.
  const printed = (await b.db.client.query<{ p: string }>('SELECT payload::text AS p FROM public.outbox WHERE id = $1', [jsonId])).rows[0]
    ?.p as string;
  Object.assign(out[0] as Written, { bytes: Buffer.from(printed), data: JSON.parse(printed), jsonText: printed });

  const textId = uuid();
  const text = 'line 1\nline "2" \\ \u{1F600} é';
  await tx(
    q(`INSERT INTO public.outbox_text (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k 2', 'com.example.noted', $3)`, [
      textId,
      beta,
      text,
    ]),
    {
      id: textId,
      key: 'k 2',
      type: 'com.example.noted',
      aggregatetype: beta,
      contentType: 'text/plain; charset=utf-8',
      bytes: Buffer.from(text),
      data: text,
      jsonText: null,
    },
  );

  const bytesId = uuid();
  const bytes = Buffer.from([0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x0a, 0x22]);
  await tx(
    q(`INSERT INTO public.outbox_bytes (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k-3', 'com.example.blob', $3)`, [
      bytesId,
      alpha,
      bytes,
    ]),
    {
      id: bytesId,
      key: 'k-3',
      type: 'com.example.blob',
      aggregatetype: alpha,
      contentType: 'application/octet-stream',
      bytes,
      data: bytes,
      jsonText: null,
    },
  );

  const msgId = uuid();
  const exact = '{"n": 12345678901234567891, "f": 1.10, "e": "\\u00e9\\n"}';
  const content = `{"id":"${msgId}","aggregatetype":"${beta}","aggregateid":"k-4","type":"com.example.exact","payload":${exact}}`;
  await tx(q(`SELECT pg_logical_emit_message(true, 'outbox', $1)`, [content]), {
    id: msgId,
    key: 'k-4',
    type: 'com.example.exact',
    aggregatetype: beta,
    contentType: 'application/json',
    bytes: Buffer.from(exact),
    data: JSON.parse(exact),
    jsonText: exact,
  });
  return out;
}

/** Starts the relay, writes the events and waits for them: each as written, and as a consumer read it. */
async function relayEvents(b: Bundle): Promise<Array<[Written, Delivered]>> {
  const relay = b.start();
  await relay.ready();
  const written = await writeEvents(b);
  await waitDelivered(
    b.reader,
    written.map((w) => w.id),
  );
  return written.map((w) => [w, b.reader.delivered().find((m) => m.id === w.id) as Delivered]);
}

/** The CloudEvents attributes a message carries in binary mode, by attribute name. */
function binaryAttributes(kind: SinkKind, d: Delivered): Record<string, string> {
  const prefix = kind === 'kafka' ? 'ce_' : 'cloudEvents:';
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(d.headers)) if (k.startsWith(prefix)) out[k.slice(prefix.length)] = v;
  return out;
}

/** The message as the SDK parses it, in either mode: the Kafka binding for Kafka, the HTTP binding for AMQP (see above). */
function sdkEvent(kind: SinkKind, d: Delivered): CloudEvent<unknown> {
  if (kind === 'kafka') {
    const message: KafkaMessage = { key: d.key, value: d.value, headers: d.headers, body: d.value, timestamp: undefined };
    return Kafka.toEvent(message) as CloudEvent<unknown>;
  }
  const headers: Record<string, string> = { 'content-type': d.contentType ?? '' };
  for (const [name, value] of Object.entries(binaryAttributes(kind, d))) headers[`ce-${name}`] = value;
  // Text (JSON, the structured envelope, plain text) as a string, which the binding parses by its
  // content type; bytes as they are.
  const body = /json|^text\//.test(d.contentType ?? '') ? d.value.toString('utf8') : d.value;
  return HTTP.toEvent({ headers, body }) as CloudEvent<unknown>;
}

/**
 * The SDK's `data` against what was written. Bytes come back as a typed array of byte values (a
 * Uint32Array from the HTTP binding's data_base64, a Buffer from Kafka's); text too where the
 * binding parses only JSON (Kafka binary), so text is compared as its UTF-8 bytes.
 */
function expectData(got: unknown, w: Written): void {
  const bytes = ArrayBuffer.isView(got) ? Buffer.from(Array.from(got as unknown as ArrayLike<number>)) : null;
  if (Buffer.isBuffer(w.data)) expect(bytes?.equals(w.data)).toBe(true);
  else if (typeof w.data === 'string') expect(bytes === null ? got : bytes.toString('utf8')).toBe(w.data);
  else expect(got).toEqual(w.data);
}

/** The checks every event must pass, whatever the mode: the spec's attribute rules and the values written. */
function checkAttributes(e: Record<string, unknown>, w: Written): void {
  for (const name of Object.keys(e)) expect(name, 'attribute name').toMatch(ATTRIBUTE_NAME);
  expect(e.specversion).toBe('1.0');
  expect(e.id).toBe(w.id);
  expect(e.source).toBe(`/outboxd/${w.aggregatetype}`);
  expect(e.type).toBe(w.type);
  expect(e.subject).toBe(w.key);
  expect(e.time, 'time is RFC 3339').toMatch(RFC3339);
  const t = Date.parse(e.time as string);
  expect(t).toBeGreaterThanOrEqual(w.notBeforeMs);
  expect(t).toBeLessThanOrEqual(w.notAfterMs);
}

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  // RabbitMQ's default routing key {aggregatetype}.{type} would make a null type a missing route first.
  const routing = kind === 'rabbitmq' ? '    routingKey: "{aggregatetype}"\n' : '';
  const sinkExtra = (mode: string) => `${routing}  cloudevents:\n    mode: ${mode}\n    source: "${SOURCE}"\n`;

  describe(`CloudEvents → ${kind}`, () => {
    // Kafka: the worker-thread producers (KAFKA_TEST_WORKERS, 1 by default; 0 runs the kafkajs
    // producer) and the transactional one each send the headers the mapper built.
    const deliveries = [
      { delivery: '', exactlyOnce: false },
      ...(kind === 'kafka' ? [{ delivery: ', exactly-once', exactlyOnce: true }] : []),
    ];
    for (const { delivery, exactlyOnce } of deliveries) {
      it(`binary${delivery}: the attributes in the binding headers, the payload byte for byte, and the SDK reads the event written`, async () => {
        await using b = await bundle({ kind, sinkExtra: sinkExtra('binary'), ddl: DDL, tables: TABLES, exactlyOnce });
        for (const [w, d] of await relayEvents(b)) {
          expect(d.value.equals(w.bytes), `${w.id}: payload bytes`).toBe(true);
          const attrs = binaryAttributes(kind, d);
          checkAttributes(attrs, w);
          expect(Object.keys(attrs).sort()).toEqual(['id', 'source', 'specversion', 'subject', 'time', 'type']);
          // datacontenttype: Kafka's content-type header, AMQP's content-type property.
          expect(kind === 'kafka' ? d.headers['content-type'] : d.contentType).toBe(w.contentType);
          // The outbox headers are still there, as plain headers.
          expect(d.headers.id).toBe(w.id);
          expect(d.headers.type).toBe(w.type);
          if (w.key === 'order-1') expect(d.headers.correlation_id).toBe('corr-1');

          const e = sdkEvent(kind, d);
          expect(e.validate()).toBe(true);
          expect([e.specversion, e.id, e.source, e.type, e.subject, e.datacontenttype]).toEqual([
            '1.0',
            w.id,
            `/outboxd/${w.aggregatetype}`,
            w.type,
            w.key,
            w.contentType,
          ]);
          expect(Date.parse(e.time as string)).toBe(Date.parse(attrs.time as string));
          expectData(e.data, w);
        }
      });
    }

    it('structured: application/cloudevents+json with the payload embedded exactly as written, and the SDK reads the event written', async () => {
      await using b = await bundle({ kind, sinkExtra: sinkExtra('structured'), ddl: DDL, tables: TABLES });
      for (const [w, d] of await relayEvents(b)) {
        expect(kind === 'kafka' ? d.headers['content-type'] : d.contentType).toBe(STRUCTURED);
        expect(Object.keys(d.headers).some((k) => /^(ce_|cloudEvents[:_])/i.test(k))).toBe(false);
        const text = d.value.toString('utf8');
        // The test may parse the envelope; the relay never did (it is written, not serialised).
        const env = JSON.parse(text) as Record<string, unknown>;
        const { data, data_base64, datacontenttype, ...attrs } = env;
        checkAttributes({ ...attrs, datacontenttype }, w);
        expect(datacontenttype).toBe(w.contentType);
        if (w.jsonText !== null) {
          expect(text.endsWith(`,"data":${w.jsonText}}`), `${w.id}: JSON payload embedded verbatim`).toBe(true);
          expect(data_base64).toBeUndefined();
        } else if (Buffer.isBuffer(w.data)) {
          expect(Buffer.from(data_base64 as string, 'base64').equals(w.data)).toBe(true);
          expect(data).toBeUndefined();
        } else {
          expect(data).toBe(w.data);
        }

        const e = sdkEvent(kind, d);
        expect(e.validate()).toBe(true);
        expect([e.id, e.source, e.type, e.subject, e.datacontenttype]).toEqual([
          w.id,
          `/outboxd/${w.aggregatetype}`,
          w.type,
          w.key,
          w.contentType,
        ]);
        expectData(e.data, w);
      }
    });

    it('a row without a type is poison missing_ce_attribute: dead-lettered with the reason, the stream goes on', async () => {
      await using b = await bundle({ kind, sinkExtra: sinkExtra('binary'), onPoison: 'dead-letter' });
      const relay = b.start();
      await relay.ready();
      const bad = uuid();
      const good = uuid();
      await b.db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, payload) VALUES ($1, $2, 'k', '{"p":1}')`, [
        bad,
        b.types[0],
      ]);
      await b.db.client.query(
        `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', '{"p":2}')`,
        [good, b.types[0]],
      );
      await waitDelivered(b.reader, [bad, good]);
      const dead = b.reader.delivered().find((d) => d.id === bad) as Delivered;
      expect(dead.headers['outboxd.error_reason']).toBe('missing_ce_attribute');
      expect(dead.headers['outboxd.error']).toMatch(/CloudEvents attribute type \(the type column\) is null/);
      expect(await relay.metric('outboxd_poison_messages_total', { reason: 'missing_ce_attribute' })).toBe(1);
      const ok = b.reader.delivered().find((d) => d.id === good) as Delivered;
      expect(binaryAttributes(kind, ok).type).toBe('T');
    });
  });
}
