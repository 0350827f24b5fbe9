import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { poison } from './expect-poison.js';
import { Txn } from '../../src/positions/watermark.js';
import { parseConfig } from '../../src/config/load.js';
import { PoisonError } from '../../src/errors.js';
import type { OutboxMessage } from '../../src/interfaces.js';
import { CloudEventsEncoder, KAFKA_BINDING } from '../../src/outbox/cloudevents.js';
import { OutboxMapper } from '../../src/outbox/mapper.js';
import { parseTemplate } from '../../src/config/template.js';
import { deadLetterForms, letterFor } from '../../src/sink/dead-letter.js';
import { topicMessages } from '../../src/sink/kafka/client.js';
import { encodeRecords } from '../../src/sink/kafka/produce-encoder.js';
import { properties } from '../../src/sink/rabbitmq/sink.js';
import { StdoutSink } from '../../src/sink/stdout.js';

/**
 * Header and column names are data: `__proto__`, `constructor`, `toString` are names like any
 * other. On a plain object `o.__proto__ = 'x'` stores nothing and `o.constructor` is inherited,
 * so each place that builds or reads such a map is checked here with those names.
 */

const require = createRequire(import.meta.url);
const KafkajsRecord = require('kafkajs/src/protocol/recordBatch/record/v0/index.js') as (r: {
  key: unknown;
  value: unknown;
  headers: unknown;
}) => { buffer: Buffer };
const codec = require('amqplib/lib/codec.js') as { encodeTable(buf: Buffer, val: unknown, offset: number): number };

const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\n', {});
const table = cfg.outbox.tables[0]!;
const txn = new Txn(742, 0x1507ec0n, 1_700_000_000_000);
const HEADERS = '{"__proto__":"x","constructor":"y","a":"b"}';
const COLUMNS = ['id', 'aggregatetype', 'aggregateid', 'type', 'payload', 'headers'];

function mapRow(mapper = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}')), headers = HEADERS): OutboxMessage {
  const b = mapper.bind(
    table,
    COLUMNS.map((name) => ({ name, typeOid: name === 'payload' ? 3802 : 25 })),
  );
  return mapper.fromRow(b, ['i-1', 'order', 'k-1', 'Placed', '{"n": 1}', headers], txn);
}

/** The header pairs, in order, exactly as the object holds them (own, enumerable). */
const pairs = (h: Readonly<Record<string, unknown>>): Array<[string, unknown]> => Object.keys(h).map((k) => [k, h[k]]);

/** The row's three headers are among the pairs, each as its own name with its own value. */
function expectRowHeaders(p: ReadonlyArray<readonly [string, unknown]>): void {
  for (const want of [
    ['__proto__', 'x'],
    ['constructor', 'y'],
    ['a', 'b'],
  ])
    expect(p).toContainEqual(want);
}

/** Reads a Kafka record (v2: length, attributes, deltas, key, value, headers) back into header pairs. */
function kafkaRecordHeaders(buf: Buffer): Array<[string, string]> {
  let at = 0;
  const varint = (): number => {
    let v = 0;
    let shift = 0;
    for (;;) {
      const b = buf[at++] as number;
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) break;
      shift += 7;
    }
    return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
  };
  const bytes = (): string | null => {
    const n = varint();
    if (n < 0) return null;
    at += n;
    return buf.toString('utf8', at - n, at);
  };
  varint(); // length
  at++; // attributes
  varint(); // timestamp delta
  varint(); // offset delta
  bytes(); // key
  bytes(); // value
  const out: Array<[string, string]> = [];
  for (let n = varint(); n > 0; n--) out.push([bytes() as string, bytes() as string]);
  return out;
}

/** Reads an AMQP 0-9-1 field table of long strings back into pairs. */
function amqpTablePairs(buf: Buffer): Array<[string, string]> {
  const end = 4 + buf.readUInt32BE(0);
  const out: Array<[string, string]> = [];
  for (let at = 4; at < end; ) {
    const klen = buf[at++] as number;
    const key = buf.toString('utf8', at, at + klen);
    at += klen;
    expect(String.fromCharCode(buf[at++] as number)).toBe('S');
    const vlen = buf.readUInt32BE(at);
    at += 4;
    out.push([key, buf.toString('utf8', at, at + vlen)]);
    at += vlen;
  }
  return out;
}

describe('header names that Object.prototype also has', () => {
  it('the mapper carries __proto__, constructor and others from the headers column as ordinary headers', () => {
    const m = mapRow();
    expect(Object.hasOwn(m.headers, '__proto__')).toBe(true);
    expectRowHeaders(pairs(m.headers));
    expect(Object.getPrototypeOf(m.headers)).toBe(Object.prototype);
    // The size bound counts them: 9 + 1 for __proto__ among the rest.
    const counted = Object.keys(m.headers).reduce((n, k) => n + k.length + (m.headers[k] as string).length, 0);
    expect(m.sizeBytes).toBe(Buffer.byteLength('{"n": 1}') + 'k-1'.length + counted + 'outbox.event.order'.length);
  });

  it('the mapper carries them from a logical message’s headers too', () => {
    const mapper = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'));
    const content = `{"id":"m-1","aggregatetype":"order","aggregateid":"k","payload":{},"headers":${HEADERS}}`;
    expectRowHeaders(pairs(mapper.fromLogicalMessage(Buffer.from(content), txn).headers));
  });

  it('a row header named __proto__ is still checked against the CloudEvents reserved names', () => {
    const ce = new CloudEventsEncoder('binary', parseTemplate('/outbox/{aggregatetype}'), KAFKA_BINDING);
    const m = mapRow(new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'), ce));
    expectRowHeaders(pairs(m.headers));
    expect(m.headers.ce_id).toBe('i-1');
    const bad = poison(() => mapRow(new OutboxMapper(parseTemplate('t'), ce), '{"__proto__":"x","ce_id":"spoof"}'));
    expect(bad.reason).toBe('bad_ce_attribute');
  });

  it('the stdout sink writes them in the JSON line, and in a dead letter’s', async () => {
    let text = '';
    const out = new Writable({
      write(chunk, _enc, cb) {
        text += chunk.toString();
        cb();
      },
    });
    const sink = new StdoutSink({ type: 'stdout', deadLetterDestination: 'dlq' } as never, out);
    const m = mapRow();
    await sink.publish([m]);
    await sink.publishDeadLetter(letterFor(m, new PoisonError('oversized', 'too big')));
    const lines = text.trim().split('\n');
    expect(lines).toHaveLength(2);
    for (const l of lines) {
      expect(l).toContain('"__proto__":"x","constructor":"y","a":"b"');
      // JSON.parse defines every member as its own property, __proto__ included.
      expectRowHeaders(pairs((JSON.parse(l) as { headers: Record<string, string> }).headers));
    }
  });

  it('dead-letter forms keep them beside the error headers', () => {
    const [full, noPayload] = deadLetterForms(letterFor(mapRow(), new PoisonError('oversized', 'too big')));
    expectRowHeaders(pairs(full?.headers ?? {}));
    expectRowHeaders(pairs(noPayload?.headers ?? {}));
  });

  it('Kafka: kafkajs’s record encoding and the worker encoder both write them as record headers', () => {
    const m = mapRow();
    const [topic] = topicMessages([m]);
    const msg = topic?.messages[0] as { key: string; value: string; headers: Record<string, string> };
    expectRowHeaders(kafkaRecordHeaders(KafkajsRecord({ key: msg.key, value: msg.value, headers: msg.headers }).buffer));
    const { bytes } = encodeRecords([m], [0], [0]);
    expectRowHeaders(kafkaRecordHeaders(bytes));
    expect(kafkaRecordHeaders(bytes)).toEqual(pairs(m.headers));
  });

  it('AMQP: the publish properties’ header table carries them', () => {
    const m = mapRow();
    const headers = properties(m).headers as Record<string, unknown>;
    const buf = Buffer.alloc(4096);
    const size = codec.encodeTable(buf, headers, 0);
    const got = amqpTablePairs(buf.subarray(0, size));
    expectRowHeaders(got);
    expect(got).toContainEqual(['aggregateid', 'k-1']);
  });
});

describe('template fields that Object.prototype also has', () => {
  const columns = (names: string[]) => names.map((name) => ({ name, typeOid: name === 'payload' ? 3802 : 25 }));

  it('a column named constructor or __proto__ renders its value', () => {
    for (const field of ['constructor', '__proto__', 'toString']) {
      const mapper = new OutboxMapper(parseTemplate(`events.{${field}}`));
      const b = mapper.bind(table, columns(['id', 'aggregatetype', 'aggregateid', 'payload', field]));
      expect(mapper.fromRow(b, ['i', 'order', 'k', '{}', 'v1'], txn).destination).toBe('events.v1');
      const content = `{"id":"m","aggregatetype":"order","aggregateid":"k","payload":{},"${field}":"v2"}`;
      expect(mapper.fromLogicalMessage(Buffer.from(content), txn).destination).toBe('events.v2');
    }
  });

  it('a field no column has is a missing route, not an inherited function', () => {
    for (const field of ['constructor', 'toString', '__proto__', 'hasOwnProperty']) {
      const mapper = new OutboxMapper(parseTemplate(`events.{${field}}`));
      const b = mapper.bind(table, columns(['id', 'aggregatetype', 'aggregateid', 'payload']));
      expect(poison(() => mapper.fromRow(b, ['i', 'order', 'k', '{}'], txn)).reason).toBe('missing_route');
      // With another raw field present, `raw` is an object too.
      const two = new OutboxMapper(parseTemplate(`events.{tenant}.{${field}}`));
      const b2 = two.bind(table, columns(['id', 'aggregatetype', 'aggregateid', 'payload', 'tenant']));
      expect(poison(() => two.fromRow(b2, ['i', 'order', 'k', '{}', 't'], txn)).reason).toBe('missing_route');
    }
  });
});
