import { CloudEvent, Kafka, type KafkaMessage } from 'cloudevents';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { poison } from './expect-poison.js';
import { Txn } from '../../src/positions/watermark.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import {
  AMQP_BINDING,
  CloudEventsEncoder,
  KAFKA_BINDING,
  STRUCTURED_CONTENT_TYPE,
  cloudEventsFor,
  declaresJson,
  envelope,
  rfc3339,
} from '../../src/outbox/cloudevents.js';
import { OutboxMapper } from '../../src/outbox/mapper.js';
import { isUriReference, parseTemplate } from '../../src/config/template.js';
import type { OutboxMessage } from '../../src/interfaces.js';
import { StdoutSink } from '../../src/sink/stdout.js';

const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\n', {});
const table = cfg.outbox.tables[0]!;
const txn = new Txn(742, 0x1507ec0n, Date.UTC(2026, 4, 4, 10, 11, 12, 345));
const TIME = '2026-05-04T10:11:12.345Z';
const OIDS = { json: 3802, text: 25, bytea: 17 } as const;

/** A record as a Kafka consumer reads it, in the SDK's shape. */
function record(key: string, value: string | Buffer, headers: Record<string, string>): KafkaMessage {
  return { key, value, headers, body: value, timestamp: undefined };
}

/** Maps one row (by column name) with a mapper whose CloudEvents encoder is `ce`. */
function map(ce: CloudEventsEncoder, rec: Record<string, string | null>, kind: keyof typeof OIDS = 'json', t = txn) {
  const m = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'), ce);
  const names = Object.keys(rec);
  const b = m.bind(
    table,
    names.map((name) => ({ name, typeOid: name === 'payload' ? OIDS[kind] : OIDS.text })),
  );
  return m.fromRow(
    b,
    names.map((n) => rec[n]),
    t,
  );
}

const row = {
  id: 'c5c67e67-e7fc-4606-85d4-acfc4a079bfa',
  aggregatetype: 'order',
  aggregateid: 'order-1',
  type: 'com.example.order.placed',
  payload: '{"total": 12345678901234567891, "price": 1.10, "note": "caf\\u00e9"}',
  correlation_id: 'corr-1',
};

const source = parseTemplate('/outboxd/{aggregatetype}');
const kafkaBinary = new CloudEventsEncoder('binary', source, KAFKA_BINDING);
const amqpBinary = new CloudEventsEncoder('binary', source, AMQP_BINDING);
const kafkaStructured = new CloudEventsEncoder('structured', source, KAFKA_BINDING);
const amqpStructured = new CloudEventsEncoder('structured', source, AMQP_BINDING);

describe('CloudEvents binary mode', () => {
  it('Kafka: ce_ headers for every attribute and content-type for datacontenttype; payload and other headers unchanged', () => {
    const m = map(kafkaBinary, row);
    expect(m.payload).toBe(row.payload);
    expect(m.contentType).toBe('application/json');
    expect(m.headers).toEqual({
      id: row.id,
      type: row.type,
      correlation_id: 'corr-1',
      'outboxd.lsn': '0/1507EC0',
      'outboxd.xid': '742',
      ce_specversion: '1.0',
      ce_id: row.id,
      ce_source: '/outboxd/order',
      ce_type: row.type,
      ce_subject: 'order-1',
      ce_time: TIME,
      'content-type': 'application/json',
    });
  });

  it('Kafka: the SDK reads the record as the event that was written', () => {
    const m = map(kafkaBinary, row);
    const event = Kafka.toEvent(record(m.key, Buffer.from(m.payload), m.headers));
    expect(event).toBeInstanceOf(CloudEvent);
    const e = event as CloudEvent<unknown>;
    expect(e.validate()).toBe(true);
    expect([e.specversion, e.id, e.source, e.type, e.subject, e.time, e.datacontenttype]).toEqual([
      '1.0',
      row.id,
      '/outboxd/order',
      row.type,
      'order-1',
      TIME,
      'application/json',
    ]);
  });

  it('AMQP: cloudEvents: application properties; datacontenttype stays the content-type property', () => {
    const m = map(amqpBinary, row, 'text');
    expect(m.payload).toBe(row.payload);
    expect(m.contentType).toBe('text/plain; charset=utf-8');
    const ce = Object.fromEntries(Object.entries(m.headers).filter(([k]) => k.startsWith('cloudEvents:')));
    expect(ce).toEqual({
      'cloudEvents:specversion': '1.0',
      'cloudEvents:id': row.id,
      'cloudEvents:source': '/outboxd/order',
      'cloudEvents:type': row.type,
      'cloudEvents:subject': 'order-1',
      'cloudEvents:time': TIME,
    });
    expect(m.headers['content-type']).toBeUndefined();
  });

  it('leaves subject out when aggregateid is empty (present, it must be non-empty)', () => {
    const m = map(kafkaBinary, { ...row, aggregateid: '' });
    expect('ce_subject' in m.headers).toBe(false);
  });

  it('counts the attributes in the message size (the in-flight bound and the broker limits)', () => {
    const plain = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'));
    const names = Object.keys(row);
    const b = plain.bind(
      table,
      names.map((name) => ({ name, typeOid: name === 'payload' ? OIDS.json : OIDS.text })),
    );
    const without = plain.fromRow(
      b,
      names.map((n) => (row as Record<string, string>)[n]),
      txn,
    );
    const m = map(kafkaBinary, row);
    const added = Object.entries(m.headers)
      .filter(([k]) => !(k in without.headers))
      .reduce((n, [k, v]) => n + k.length + v.length, 0);
    expect(m.sizeBytes - without.sizeBytes).toBe(added);
  });
});

describe('CloudEvents structured mode', () => {
  it('embeds a JSON payload verbatim as data: every digit, escape and space as written', () => {
    const m = map(kafkaStructured, row);
    expect(m.contentType).toBe(STRUCTURED_CONTENT_TYPE);
    expect(m.headers['content-type']).toBe(STRUCTURED_CONTENT_TYPE);
    expect(m.headers.ce_id).toBeUndefined();
    expect(m.payload).toBe(
      `{"specversion":"1.0","id":"${row.id}","source":"/outboxd/order","type":"${row.type}","subject":"order-1","time":"${TIME}","datacontenttype":"application/json","data":${row.payload}}`,
    );
  });

  it('AMQP: the content-type property is the event format, no header added', () => {
    const m = map(amqpStructured, row);
    expect(m.contentType).toBe(STRUCTURED_CONTENT_TYPE);
    expect(Object.keys(m.headers).some((k) => /content-type|cloudEvents/i.test(k))).toBe(false);
  });

  it('text goes as a JSON string in data, bytea as data_base64, each exact', () => {
    const text = 'line 1\n"quoted" \\ tab\t ✓ \u{1F600} \u2028';
    const t = JSON.parse(map(kafkaStructured, { ...row, payload: text }, 'text').payload as string);
    expect(t.data).toBe(text);
    expect(t.datacontenttype).toBe('text/plain; charset=utf-8');
    expect('data_base64' in t).toBe(false);
    const bytes = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80, 0x0a]);
    const b = JSON.parse(map(kafkaStructured, { ...row, payload: `\\x${bytes.toString('hex')}` }, 'bytea').payload as string);
    expect(Buffer.from(b.data_base64, 'base64')).toEqual(bytes);
    expect(b.datacontenttype).toBe('application/octet-stream');
    expect('data' in b).toBe(false);
  });

  it('escapes attribute values exactly', () => {
    const id = 'id "with" \\ quotes and ✓ and \u{1F600}';
    const text = envelope(id, '/s', 't', 'k\u00e9y', TIME, 'application/json', 'null');
    const parsed = JSON.parse(text);
    expect(parsed.id).toBe(id);
    expect(parsed.subject).toBe('k\u00e9y');
    expect(parsed.data).toBeNull();
    expect(text.endsWith(',"data":null}')).toBe(true);
  });

  it('the SDK reads the structured record as the event that was written', () => {
    const m = map(kafkaStructured, { ...row, payload: '{"a":[1,2,{"b":null}]}' });
    const e = Kafka.toEvent(record(m.key, m.payload as string, m.headers)) as CloudEvent<unknown>;
    expect(e.validate()).toBe(true);
    expect([e.id, e.source, e.type, e.subject, e.time, e.datacontenttype]).toEqual([
      row.id,
      '/outboxd/order',
      row.type,
      'order-1',
      TIME,
      'application/json',
    ]);
    expect(e.data).toEqual({ a: [1, 2, { b: null }] });
  });
});

describe('CloudEvents on stdout', () => {
  /** The JSON lines a StdoutSink writes for `messages`. */
  async function lines(...messages: OutboxMessage[]): Promise<Array<Record<string, unknown>>> {
    let text = '';
    const out = new Writable({
      write(chunk, _enc, done) {
        text += chunk.toString();
        done();
      },
    });
    const sink = new StdoutSink(cfg.sink.type === 'stdout' ? cfg.sink.stdout : (undefined as never), out);
    await sink.publish(messages);
    return text
      .trimEnd()
      .split('\n')
      .map((l) => JSON.parse(l));
  }

  it('structured: the payload field is the event itself, as JSON; binary: the ce_ headers, as on Kafka', async () => {
    const [structured, binary] = await lines(map(kafkaStructured, row), map(kafkaBinary, row));
    const event = structured?.payload as Record<string, unknown>;
    expect([event.specversion, event.id, event.source, event.type, event.subject, event.time]).toEqual([
      '1.0',
      row.id,
      '/outboxd/order',
      row.type,
      'order-1',
      TIME,
    ]);
    // The SDK parses data with JSON.parse, so the big number comes back as the nearest double.
    expect(event.data).toEqual({ total: Number('12345678901234567891'), price: 1.1, note: 'café' });
    const headers = binary?.headers as Record<string, string> | undefined;
    expect(headers?.ce_type).toBe(row.type);
    expect(binary?.payload).toEqual(event.data);
  });
});

describe('CloudEvents attributes the spec requires or forbids: poison with a named reason', () => {
  it('a null or empty type is missing_ce_attribute, with the id and key for the dead letter', () => {
    for (const type of [null, '']) {
      const err = poison(() => map(kafkaBinary, { ...row, type }));
      expect(err.reason).toBe('missing_ce_attribute');
      expect(err.message).toMatch(/attribute type/);
      expect(err.subject).toEqual({ id: row.id, key: 'order-1' });
    }
  });

  it('a source template field that is null or empty is missing_ce_attribute', () => {
    const ce = new CloudEventsEncoder('binary', parseTemplate('/o/{region}'), KAFKA_BINDING);
    const err = poison(() => map(ce, { ...row, region: null }));
    expect(err.reason).toBe('missing_ce_attribute');
    expect(err.message).toMatch(/CloudEvents source template "\/o\/\{region\}" needs \{region\}/);
    expect(map(ce, { ...row, region: 'eu/west 1' }).headers.ce_source).toBe('/o/eu%2Fwest%201');
  });

  it('control characters and noncharacters in id, type or subject are bad_ce_attribute', () => {
    expect(poison(() => map(kafkaBinary, { ...row, type: 'a\nb' })).message).toMatch(/type .* holds U\+000A/);
    expect(poison(() => map(kafkaBinary, { ...row, aggregateid: 'k\u0085' })).reason).toBe('bad_ce_attribute');
    expect(poison(() => map(kafkaBinary, { ...row, id: 'i\uFFFE' })).reason).toBe('bad_ce_attribute');
    expect(map(kafkaBinary, { ...row, aggregateid: 'k \u{1F600} é' }).headers.ce_subject).toBe('k \u{1F600} é');
  });

  it('a row header with a name the binding reserves is bad_ce_attribute, never overwritten', () => {
    for (const name of ['ce_id', 'CE_source', 'ce_tenant', 'content-type', 'Content-Type']) {
      const err = poison(() => map(kafkaBinary, { ...row, headers: JSON.stringify({ [name]: 'x' }) }));
      expect(err.reason).toBe('bad_ce_attribute');
      expect(err.message).toContain(name);
    }
    expect(poison(() => map(amqpStructured, { ...row, headers: '{"cloudEvents_id":"x"}' })).reason).toBe('bad_ce_attribute');
    // Names other bindings reserve are plain headers.
    expect(map(amqpBinary, { ...row, headers: '{"content-type":"x","ce_x":"y"}' }).headers['content-type']).toBe('x');
  });

  it('time is RFC 3339 in UTC, and a time RFC 3339 cannot write is bad_ce_attribute', () => {
    expect(rfc3339(0, 'i')).toBe('1970-01-01T00:00:00.000Z');
    expect(map(kafkaBinary, row).headers.ce_time).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    expect(poison(() => rfc3339(Date.UTC(10000, 0, 1), 'i')).reason).toBe('bad_ce_attribute');
    expect(poison(() => rfc3339(Number.NaN, 'i')).reason).toBe('bad_ce_attribute');
  });

  it('formats the time once per transaction, and anew for the next', () => {
    const ce = new CloudEventsEncoder('binary', source, KAFKA_BINDING);
    expect(map(ce, row).headers.ce_time).toBe(TIME);
    const next = new Txn(743, 0x1507f00n, Date.UTC(2026, 4, 4, 10, 11, 13, 0));
    expect(map(ce, row, 'json', next).headers.ce_time).toBe('2026-05-04T10:11:13.000Z');
  });
});

describe('CloudEvents config', () => {
  const load = (sink: string) => parseConfig(`postgres:\n  url: postgres://u@h/db\nsink:\n${sink}`, {});

  it('is off by default, and off makes no encoder', () => {
    const c = load('  type: stdout\n');
    expect(c.sink.cloudevents.mode).toBe('off');
    expect(cloudEventsFor(c.sink)).toBeNull();
  });

  it('picks the binding from the sink: AMQP for RabbitMQ, Kafka for Kafka and stdout', () => {
    const ce = '  cloudevents:\n    mode: binary\n';
    expect(cloudEventsFor(load(`  type: rabbitmq\n  rabbitmq:\n    url: amqp://h\n    exchange: x\n${ce}`).sink)?.binding).toBe(
      AMQP_BINDING,
    );
    expect(cloudEventsFor(load(`  type: kafka\n  kafka:\n    brokers: [h:9092]\n${ce}`).sink)?.binding).toBe(KAFKA_BINDING);
    expect(cloudEventsFor(load(`  type: stdout\n${ce}`).sink)?.binding).toBe(KAFKA_BINDING);
  });

  it('refuses a source template that cannot make a URI-reference, naming the key', () => {
    for (const bad of ['/a b/{aggregatetype}', '/x/%zz', '{aggregatetype} x']) {
      expect(() => load(`  type: stdout\n  cloudevents:\n    mode: binary\n    source: "${bad}"\n`)).toThrow(ConfigError);
      expect(() => load(`  type: stdout\n  cloudevents:\n    mode: binary\n    source: "${bad}"\n`)).toThrow(
        /^config sink\.cloudevents\.source: /,
      );
    }
    expect(() => load('  type: stdout\n  cloudevents:\n    mode: sideways\n')).toThrow(/sink\.cloudevents\.mode/);
  });
});

describe('URI-reference and JSON media types', () => {
  it('accepts what RFC 3986 calls a URI-reference and refuses what it does not', () => {
    for (const ok of [
      '/outboxd/order',
      'https://orders.example.com/x?y=1#z',
      'urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66',
      'mailto:a@b.c',
      'x',
      '//host:80/p',
      'a%2Fb',
      "!$&'()*+,;=",
      '',
    ]) {
      expect(isUriReference(ok), ok).toBe(true);
    }
    for (const bad of ['a b', '/x/%zz', '1a:b', 'a\\b', '/x"y', '/é', 'http://[::1/x']) {
      expect(isUriReference(bad), bad).toBe(false);
    }
  });

  it('knows which content types declare JSON (json-format.md 3.1.1)', () => {
    for (const ok of ['application/json', 'application/json; charset=utf-8', 'text/json', 'application/vnd.foo+json', 'APPLICATION/JSON']) {
      expect(declaresJson(ok), ok).toBe(true);
    }
    for (const bad of ['text/plain; charset=utf-8', 'application/octet-stream', 'application/jsonx', 'application/json-seq']) {
      expect(declaresJson(bad), bad).toBe(false);
    }
  });
});
