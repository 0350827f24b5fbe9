import { describe, expect, it } from 'vitest';
import { poison } from './expect-poison.js';
import { Txn } from '../../src/positions/watermark.js';
import { parseConfig } from '../../src/config/load.js';
import { OutboxMapper, type PayloadKind, decodeByteaHex, payloadKindOf, requireColumns } from '../../src/outbox/mapper.js';
import { parseTemplate } from '../../src/config/template.js';

const cfg = parseConfig(
  'postgres:\n  url: postgres://u@h/db\noutbox:\n  tables:\n    - name: public.outbox\n    - name: s.events\n      columns:\n        aggregateid: account_id\n        payload: body\n',
  {},
);
const TYPE_OIDS = { json: 3802, text: 25, bytea: 17 } as const;

/** Maps a row given by name, binding table `t` to those columns first, as a RELATION message would. */
function fromRow(m: OutboxMapper, t: number, rec: Record<string, string | null>, tx: Txn, kind: PayloadKind = 'json') {
  const config = cfg.outbox.tables[t]!;
  const names = Object.keys(rec);
  const binding = m.bind(
    config,
    names.map((name) => ({ name, typeOid: name === config.columns.payload ? TYPE_OIDS[kind] : TYPE_OIDS.text })),
  );
  return m.fromRow(
    binding,
    names.map((n) => rec[n]),
    tx,
  );
}
const txn = new Txn(742, 0x1507ec0n, 1_700_000_000_000);
const mapper = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'));
const row = {
  id: 'c5c67e67-e7fc-4606-85d4-acfc4a079bfa',
  aggregatetype: 'order',
  aggregateid: 'order-1',
  type: 'OrderPlaced',
  payload: '{"total": 42.5}',
  headers: null,
  correlation_id: null,
  causation_id: null,
  reply_to: null,
  traceparent: null,
};

describe('OutboxMapper.fromRow', () => {
  it('maps a Debezium-style row: topic from aggregatetype, key from aggregateid, id header', () => {
    const m = fromRow(mapper, 0, row, txn);
    expect(m.destination).toBe('outbox.event.order');
    expect(m.key).toBe('order-1');
    expect(m.id).toBe(row.id);
    expect(m.payload).toBe('{"total": 42.5}');
    expect(m.contentType).toBe('application/json');
    expect(m.headers).toEqual({ id: row.id, type: 'OrderPlaced', 'outboxd.lsn': '0/1507EC0', 'outboxd.xid': '742' });
    expect(m.sizeBytes).toBeGreaterThan(15);
  });

  it('passes the payload through byte for byte (no parse, no re-serialisation)', () => {
    const payload = '{"b": 1, "a": [1.50, "ü"]}';
    expect(fromRow(mapper, 0, { ...row, payload }, txn).payload).toBe(payload);
  });

  it('adds correlation headers and merges the headers column, fixed headers winning', () => {
    const m = fromRow(
      mapper,
      0,
      {
        ...row,
        correlation_id: 'c-1',
        causation_id: 'e-0',
        reply_to: 'replies',
        traceparent: '00-abc-def-01',
        headers: '{"tenant": "t1", "n": 3, "id": "spoof"}',
      },
      txn,
    );
    expect(m.headers).toMatchObject({
      tenant: 't1',
      n: '3',
      id: row.id,
      correlation_id: 'c-1',
      causation_id: 'e-0',
      reply_to: 'replies',
      traceparent: '00-abc-def-01',
    });
    expect(m.correlationId).toBe('c-1');
    expect(m.replyTo).toBe('replies');
  });

  it('uses the remapped columns of a table', () => {
    const m = fromRow(mapper, 1, { id: '7', aggregatetype: 'acct', account_id: 'a-9', body: 'hello', type: null }, txn);
    expect(m.key).toBe('a-9');
    expect(m.payload).toBe('hello');
    expect(m.headers.type).toBeUndefined();
  });

  it('decodes a bytea payload from its hex text form', () => {
    const m = fromRow(mapper, 0, { ...row, payload: '\\x00ff10' }, txn, 'bytea');
    expect(m.payload).toEqual(Buffer.from([0, 255, 16]));
    expect(m.contentType).toBe('application/octet-stream');
  });

  it('rejects unmappable rows as poison with a reason', () => {
    expect(poison(() => fromRow(mapper, 0, { ...row, aggregateid: null }, txn)).reason).toBe('null_key');
    expect(poison(() => fromRow(mapper, 0, { ...row, aggregatetype: null }, txn)).reason).toBe('missing_route');
    expect(poison(() => fromRow(mapper, 0, { ...row, id: null }, txn)).reason).toBe('missing_id');
    expect(poison(() => fromRow(mapper, 0, { ...row, payload: null }, txn)).reason).toBe('missing_payload');
    expect(poison(() => fromRow(mapper, 0, { ...row, headers: '[1]' }, txn)).reason).toBe('bad_headers');
  });

  it('renders templates over other fields and raw columns', () => {
    const m = new OutboxMapper(parseTemplate('{aggregatetype}.{type}.{region}'));
    expect(fromRow(m, 0, { ...row, region: 'eu' }, txn).destination).toBe('order.OrderPlaced.eu');
    expect(poison(() => fromRow(m, 0, { ...row, type: null, region: 'eu' }, txn)).message).toMatch(/needs \{type\}/);
  });

  it('gives each row the destination of its own value when rows in a row share one, or not', () => {
    const m = new OutboxMapper(parseTemplate('outbox.{aggregatetype}.v1'));
    const seen = ['order', 'order', 'invoice', 'order', `${'ord'}er`, 'invoice'].map(
      (aggregatetype) => fromRow(m, 0, { ...row, aggregatetype }, txn).destination,
    );
    expect(seen).toEqual([
      'outbox.order.v1',
      'outbox.order.v1',
      'outbox.invoice.v1',
      'outbox.order.v1',
      'outbox.order.v1',
      'outbox.invoice.v1',
    ]);
    // A null or empty value after a known one is still no route.
    expect(poison(() => fromRow(m, 0, { ...row, aggregatetype: null }, txn)).reason).toBe('missing_route');
    expect(poison(() => fromRow(m, 0, { ...row, aggregatetype: '' }, txn)).reason).toBe('missing_route');
    expect(fromRow(m, 0, { ...row, aggregatetype: 'invoice' }, txn).destination).toBe('outbox.invoice.v1');
    // A template of a raw column is rendered for every row.
    const raw = new OutboxMapper(parseTemplate('t.{region}'));
    expect(['eu', 'eu', 'us'].map((region) => fromRow(raw, 0, { ...row, region }, txn).destination)).toEqual(['t.eu', 't.eu', 't.us']);
  });
});

describe('OutboxMapper.bind', () => {
  const columns = ['id', 'aggregatetype', 'aggregateid', 'payload', 'created_at', 'region', 'note'].map((name) => ({
    name,
    typeOid: name === 'payload' ? 3802 : 25,
  }));

  it('asks the decoder for the mapped columns and the template columns only', () => {
    const b = new OutboxMapper(parseTemplate('{aggregatetype}.{region}')).bind(cfg.outbox.tables[0]!, columns);
    expect(b.wanted).toEqual([true, true, true, true, false, true, false]);
    expect(b.rawFields).toEqual([['region', 5]]);
    expect(b.payloadKind).toBe('json');
  });

  it('reads optional fields the table lacks as null', () => {
    const m = new OutboxMapper(parseTemplate('{aggregatetype}.{region}'));
    const b = m.bind(cfg.outbox.tables[0]!, columns);
    const msg = m.fromRow(b, ['i-1', 'order', 'k', '{}', undefined, 'eu', undefined], txn);
    expect(msg.destination).toBe('order.eu');
    expect(msg.type).toBeNull();
    expect(msg.correlationId).toBeNull();
    expect(msg.headers).toEqual({ id: 'i-1', 'outboxd.lsn': '0/1507EC0', 'outboxd.xid': '742' });
  });

  it('refuses a table without a column for a required field, naming its YAML path and the columns it has', () => {
    const m = new OutboxMapper(parseTemplate('{aggregatetype}'));
    const lacking = columns.filter((c) => c.name !== 'aggregateid');
    expect(() => requireColumns(m.bind(cfg.outbox.tables[0]!, lacking), 0, 'public.outbox')).toThrow(
      'config outbox.tables[0].columns.aggregateid: table public.outbox has no column "aggregateid" (columns: id, aggregatetype, payload, created_at, region, note)',
    );
    expect(() => requireColumns(m.bind(cfg.outbox.tables[0]!, columns), 0, 'public.outbox')).not.toThrow();
  });
});

describe('OutboxMapper for a replay', () => {
  it('puts the run header where the position headers go, and counts it in sizeBytes', () => {
    const relayed = fromRow(mapper, 0, row, txn);
    const replayed = fromRow(new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'), null, 'run-1'), 0, row, txn);
    expect(replayed.headers).toEqual({ id: row.id, type: 'OrderPlaced', 'outboxd-replay': 'run-1' });
    const position = 'outboxd.lsn'.length + '0/1507EC0'.length + 'outboxd.xid'.length + '742'.length;
    expect(replayed.sizeBytes).toBe(relayed.sizeBytes - position + 'outboxd-replay'.length + 'run-1'.length);
    expect(replayed.payload).toBe(relayed.payload);
  });
});

describe('OutboxMapper.fromLogicalMessage', () => {
  const enc = (o: unknown) => Buffer.from(JSON.stringify(o));
  const raw = (text: string) => Buffer.from(text);

  it('maps the same fields as a row; an object payload becomes its JSON text', () => {
    const m = mapper.fromLogicalMessage(
      enc({
        id: 'm1',
        aggregatetype: 'customer',
        aggregateid: 'c-7',
        type: 'Registered',
        payload: { a: 1 },
        headers: { x: 'y' },
        correlation_id: 'k',
      }),
      txn,
    );
    expect(m).toMatchObject({
      id: 'm1',
      destination: 'outbox.event.customer',
      key: 'c-7',
      payload: '{"a":1}',
      contentType: 'application/json',
    });
    expect(m.headers).toMatchObject({ x: 'y', id: 'm1', type: 'Registered', correlation_id: 'k' });
  });

  it('takes a string payload verbatim', () => {
    expect(
      mapper.fromLogicalMessage(enc({ id: 1, aggregatetype: 't', aggregateid: 2, payload: '{"pre":"serialised"}' }), txn).payload,
    ).toBe('{"pre":"serialised"}');
  });

  it('rejects content that is not a JSON object', () => {
    expect(poison(() => mapper.fromLogicalMessage(raw('not json'), txn)).reason).toBe('bad_message');
    expect(poison(() => mapper.fromLogicalMessage(enc([1]), txn)).reason).toBe('bad_message');
    expect(poison(() => mapper.fromLogicalMessage(enc({ id: 1, aggregatetype: 't', payload: 1 }), txn)).reason).toBe('null_key');
  });

  it('keeps every digit of numeric ids, keys and header values, and the payload text as emitted', () => {
    const text =
      '{"id": 12345678901234567891, "aggregatetype": "acct", "aggregateid": 9007199254740993, "type": "T",' +
      String.raw` "payload": {"amount": 1.10, "big": 1e400, "n": -0.0,  "s": "caf\u00e9"}, "headers": {"seq": 1.10, "ok": true, "nested": {"a" : [1, 2.50]}}}`;
    const m = mapper.fromLogicalMessage(raw(text), txn);
    expect(m.id).toBe('12345678901234567891');
    expect(m.key).toBe('9007199254740993');
    expect(m.payload).toBe(String.raw`{"amount": 1.10, "big": 1e400, "n": -0.0,  "s": "caf\u00e9"}`);
    expect(m.headers).toMatchObject({ seq: '1.10', ok: 'true', nested: '{"a" : [1, 2.50]}', id: '12345678901234567891' });
  });

  it('resolves the escapes of a string payload exactly, and refuses a lone surrogate', () => {
    const m = mapper.fromLogicalMessage(
      raw(String.raw`{"id":"a","aggregatetype":"t","aggregateid":"k","payload":"line\n\"q\" \ud83d\ude00 \/"}`),
      txn,
    );
    expect(m.payload).toBe('line\n"q" 😀 /');
    const lone = poison(() =>
      mapper.fromLogicalMessage(raw(String.raw`{"id":"a","aggregatetype":"t","aggregateid":"k","payload":"\ud800"}`), txn),
    );
    expect(lone.reason).toBe('bad_encoding');
  });

  it('makes content that is not UTF-8 poison (bad_encoding), never replacement characters', () => {
    const bytes = Buffer.concat([raw('{"id":"a","aggregatetype":"t","aggregateid":"k","payload":"caf'), Buffer.from([0xe9]), raw('"}')]);
    expect(poison(() => mapper.fromLogicalMessage(bytes, txn)).reason).toBe('bad_encoding');
  });

  it('refuses a duplicate field, and an object where a scalar belongs', () => {
    expect(
      poison(() => mapper.fromLogicalMessage(raw('{"id":"a","id":"b","aggregatetype":"t","aggregateid":"k","payload":1}'), txn)).reason,
    ).toBe('bad_message');
    expect(
      poison(() => mapper.fromLogicalMessage(raw('{"id":{"x":1},"aggregatetype":"t","aggregateid":"k","payload":1}'), txn)).reason,
    ).toBe('bad_message');
  });
});

describe('OutboxMapper.fromRow headers column', () => {
  it('takes header values as their exact JSON text', () => {
    const columns = ['id', 'aggregatetype', 'aggregateid', 'payload', 'headers'].map((name) => ({
      name,
      typeOid: name === 'payload' ? 3802 : 25,
    }));
    const b = mapper.bind(cfg.outbox.tables[0]!, columns);
    const msg = mapper.fromRow(
      b,
      ['i', 'order', 'k', '{}', String.raw`{"amount": 12345678901234567891, "ratio": 1.10, "who": "x\ty", "skip": null}`],
      txn,
    );
    expect(msg.headers).toMatchObject({ amount: '12345678901234567891', ratio: '1.10', who: 'x\ty' });
    expect(msg.headers).not.toHaveProperty('skip');
    expect(poison(() => mapper.fromRow(b, ['i', 'order', 'k', '{}', '[1]'], txn)).reason).toBe('bad_headers');
    expect(poison(() => mapper.fromRow(b, ['i', 'order', 'k', '{}', '{"a":1,"a":2}'], txn)).reason).toBe('bad_headers');
  });
});

describe('template and payload kinds', () => {
  it('rejects malformed templates', () => {
    expect(() => parseTemplate('a.{b')).toThrow(/unbalanced/);
    expect(() => parseTemplate('a.{}')).toThrow(/bad field/);
    expect(() => parseTemplate('')).toThrow(/empty/);
  });

  it('derives the payload kind from the column type', () => {
    expect(payloadKindOf(3802)).toBe('json');
    expect(payloadKindOf(114)).toBe('json');
    expect(payloadKindOf(17)).toBe('bytea');
    expect(payloadKindOf(25)).toBe('text');
    expect(() => decodeByteaHex('abc')).toThrow(/hex/);
    expect(() => decodeByteaHex('\\x0a0bzz')).toThrow(/not valid hex/);
    expect(decodeByteaHex('\\x00ff')).toEqual(Buffer.from([0, 255]));
  });
});
