import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { PoisonReason } from '../../src/errors.js';
import { OUTBOX_DDL, until } from '../integration/support.js';
import { type Bundle, type Delivered, type SinkKind, bundle, waitDelivered } from './fixtures.js';

/**
 * The corpus of odd but legal input. Each case states what must happen to it on each sink:
 * delivered byte for byte (payload, key, id and the headers it names), or poison with a named
 * reason. Every case runs through Kafka and RabbitMQ, under `dead-letter` (the dead letter
 * carries the reason, and the row after it flows) and under `halt` (the relay halts with the
 * reason, and the row after it waits).
 */

type Outcome = { delivered: true } | { poison: PoisonReason; shrunk?: 'payload' | 'payload,headers' };
const delivered: Outcome = { delivered: true };
const poison = (reason: PoisonReason, shrunk?: 'payload' | 'payload,headers'): Outcome => ({ poison: reason, shrunk });

/** What a delivered case must look like on the broker. */
interface Written {
  /** The message id (the id header, the AMQP messageId); null for a logical message without one. */
  id: string | null;
  key: string;
  payload: Buffer;
  headers?: Record<string, string>;
}

interface Case {
  name: string;
  write(b: Bundle, n: number): Promise<Written>;
  kafka: Outcome;
  rabbitmq: Outcome;
}

const TABLES = ['public.outbox', 'public.outbox_bin', 'public.outbox_json'];
const DDL = [
  OUTBOX_DDL,
  // Permissive, so odd rows can be written at all.
  'ALTER TABLE public.outbox ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id TYPE text',
  'CREATE TABLE public.outbox_bin (LIKE public.outbox INCLUDING DEFAULTS)',
  'ALTER TABLE public.outbox_bin ALTER COLUMN payload TYPE bytea USING NULL',
  'CREATE TABLE public.outbox_json (LIKE public.outbox INCLUDING DEFAULTS)',
  'ALTER TABLE public.outbox_json ALTER COLUMN payload TYPE json',
];

const MiB = 1024 * 1024;

/** Inserts one row and returns what Postgres hands out for it: the payload as its text (or bytes). */
async function row(
  b: Bundle,
  cols: {
    id: string;
    aggregatetype?: string;
    aggregateid?: string;
    type?: string;
    payload: string | Buffer;
    headers?: string;
    correlation_id?: string;
  },
  table = 'public.outbox',
): Promise<Written> {
  const aggregatetype = cols.aggregatetype ?? (b.types[0] as string);
  const aggregateid = cols.aggregateid ?? 'k';
  const { rows } = await b.db.client.query<{ p: Buffer }>(
    `INSERT INTO ${table} (id, aggregatetype, aggregateid, type, payload, headers, correlation_id)
       VALUES ($1, $2, $3, $4, $5, $6, $7)
       RETURNING ${table === 'public.outbox_bin' ? 'payload' : "convert_to(payload::text, 'UTF8')"} AS p`,
    [cols.id, aggregatetype, aggregateid, cols.type ?? 'T', cols.payload, cols.headers ?? null, cols.correlation_id ?? null],
  );
  return { id: cols.id, key: aggregateid, payload: rows[0]?.p as Buffer };
}

/** Emits a transactional logical decoding message (text or raw bytes). */
async function emit(b: Bundle, content: string | Buffer): Promise<void> {
  await b.db.client.query(`SELECT pg_logical_emit_message(true, 'outbox', $1::${typeof content === 'string' ? 'text' : 'bytea'})`, [
    content,
  ]);
}

const uid = (n: number) => `${n}-${randomUUID()}`;
const digits = () => `${Date.now()}${Math.floor(Math.random() * 1e6)}`.padEnd(20, '7').slice(0, 20);

const cases: Case[] = [
  {
    name: 'unicode payload: emoji, RTL, control characters',
    write: (b, n) =>
      row(b, {
        id: uid(n),
        payload: '{"emoji":"🚚🎉👩🏽‍💻","rtl":"مرحبا עולם","ctl":"\\u0001\\u0007\\u001f\\t","zwj":"a\u200db","bom":"\ufeff"}',
      }),
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'numbers at the edges of float64, and past them',
    write: (b, n) =>
      row(b, {
        id: uid(n),
        payload:
          '{"max": 1.7976931348623157e308, "min": 5e-324, "over": 1e400, "long": 123456789012345678901234567890.000001, "neg0": -0, "ten": 1.10}',
      }),
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'a 1 MiB payload (over Kafka default message limit, within RabbitMQ)',
    write: (b, n) => row(b, { id: uid(n), payload: JSON.stringify({ blob: 'x'.repeat(MiB) }) }),
    kafka: poison('oversized'),
    rabbitmq: delivered,
  },
  {
    name: 'binary bytea: every byte value',
    write: (b, n) => row(b, { id: uid(n), payload: Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256)) }, 'public.outbox_bin'),
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'JSON with duplicate keys (a json column keeps them as written)',
    write: (b, n) => row(b, { id: uid(n), payload: '{"a": 1, "a": 2,  "b" : [1.0, 2.50]}' }, 'public.outbox_json'),
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'an empty object',
    write: (b, n) => row(b, { id: uid(n), payload: '{}' }),
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'an empty string id',
    write: async (b) => {
      await row(b, { id: '', payload: '{}' });
      return { id: null, key: 'k', payload: Buffer.alloc(0) };
    },
    kafka: poison('missing_id'),
    rabbitmq: poison('missing_id'),
  },
  {
    name: 'header values from the headers column keep every digit',
    write: async (b, n) => {
      const w = await row(b, { id: uid(n), payload: '{}', headers: '{"amount": 12345678901234567891, "ratio": 1.10, "flag": true}' });
      return { ...w, headers: { amount: '12345678901234567891', ratio: '1.10', flag: 'true' } };
    },
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'logical message: numeric id and key keep every digit, the payload its text',
    write: async (b) => {
      const id = digits();
      const payload = '{"amount": 1.10, "n": 1e400, "big": 9007199254740993}';
      await emit(b, `{"id": ${id}, "aggregatetype": "${b.types[0]}", "aggregateid": 9007199254740993, "type": "T", "payload": ${payload}}`);
      return { id, key: '9007199254740993', payload: Buffer.from(payload) };
    },
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'logical message: a string payload arrives as its value, escapes resolved',
    write: async (b, n) => {
      const id = uid(n);
      await emit(
        b,
        `{"id": "${id}", "aggregatetype": "${b.types[0]}", "aggregateid": "k", "type": "T", "payload": "line\\n\\"q\\" \\ud83d\\ude00 caf\\u00e9"}`,
      );
      return { id, key: 'k', payload: Buffer.from('line\n"q" 😀 café') };
    },
    kafka: delivered,
    rabbitmq: delivered,
  },
  {
    name: 'logical message: bytes that are not UTF-8',
    write: async (b) => {
      await emit(
        b,
        Buffer.concat([
          Buffer.from(`{"id":"x","aggregatetype":"${b.types[0]}","aggregateid":"k","payload":"caf`),
          Buffer.from([0xe9, 0x22, 0x7d]),
        ]),
      );
      return { id: null, key: 'k', payload: Buffer.alloc(0) };
    },
    kafka: poison('bad_encoding'),
    rabbitmq: poison('bad_encoding'),
  },
  {
    name: 'logical message: a field given twice',
    write: async (b) => {
      await emit(b, `{"id":"a","id":"b","aggregatetype":"${b.types[0]}","aggregateid":"k","payload":{}}`);
      return { id: null, key: 'k', payload: Buffer.alloc(0) };
    },
    kafka: poison('bad_message'),
    rabbitmq: poison('bad_message'),
  },
  {
    name: 'a message id over 255 bytes',
    write: (b, n) => row(b, { id: `${uid(n)}-${'i'.repeat(300)}`, payload: '{}' }),
    kafka: delivered,
    rabbitmq: poison('field_too_long'),
  },
  {
    name: 'an event type over 255 bytes',
    write: (b, n) => row(b, { id: uid(n), type: 't'.repeat(300), payload: '{}' }),
    kafka: delivered,
    rabbitmq: poison('field_too_long'),
  },
  {
    name: 'a correlation id over 255 bytes',
    write: (b, n) => row(b, { id: uid(n), correlation_id: 'c'.repeat(300), payload: '{}' }),
    kafka: delivered,
    rabbitmq: poison('field_too_long'),
  },
  {
    name: 'a header name over 255 bytes',
    write: (b, n) => row(b, { id: uid(n), headers: JSON.stringify({ ['h'.repeat(300)]: 'v' }), payload: '{}' }),
    kafka: delivered,
    // The dead letter cannot carry that header either.
    rabbitmq: poison('field_too_long', 'payload,headers'),
  },
  {
    name: 'a header table over 64 KiB',
    write: (b, n) => row(b, { id: uid(n), headers: JSON.stringify({ big: 'h'.repeat(70_000) }), payload: '{}' }),
    kafka: delivered,
    rabbitmq: poison('headers_too_large', 'payload,headers'),
  },
  {
    name: 'payload and headers together over the limit: the dead letter drops the payload',
    write: (b, n) =>
      row(b, { id: uid(n), headers: JSON.stringify({ big: 'h'.repeat(600_000) }), payload: JSON.stringify({ p: 'p'.repeat(600_000) }) }),
    kafka: poison('oversized', 'payload'),
    rabbitmq: poison('headers_too_large', 'payload,headers'),
  },
  {
    name: 'headers alone at the limit: the dead letter drops payload and headers',
    // The column just fits the 1 MiB limit; with the relay's own headers the message does not.
    write: (b, n) => row(b, { id: uid(n), headers: JSON.stringify({ big: 'h'.repeat(MiB - 16 - 12) }), payload: '{}' }),
    kafka: poison('oversized', 'payload,headers'),
    rabbitmq: poison('headers_too_large', 'payload,headers'),
  },
  {
    name: 'a destination too long for a topic name or a routing key',
    write: (b, n) => row(b, { id: uid(n), aggregatetype: `a${'x'.repeat(300)}`, payload: '{}' }),
    kafka: poison('unroutable'),
    rabbitmq: poison('field_too_long'),
  },
  {
    // Over the in-flight byte bound (4 MiB here) too: its dead letter carries the other columns.
    name: 'a huge row (24 MiB): never decoded',
    write: (b, n) => row(b, { id: uid(n), payload: JSON.stringify({ blob: 'x'.repeat(24 * MiB) }) }),
    kafka: poison('oversized'),
    rabbitmq: poison('oversized'),
  },
];

/** Writes a plain row that must flow after a case (or wait behind it). */
async function follower(b: Bundle): Promise<string> {
  const id = `follower-${randomUUID()}`;
  await b.db.client.query(
    `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', '{"seq":1}')`,
    [id, b.types[0]],
  );
  return id;
}

/** The message a delivered case arrived as (on the main destination, not a dead letter). */
function arrival(all: Delivered[], w: Written): Delivered | undefined {
  return all.find((d) => d.id === w.id && d.headers['outboxd.error_reason'] === undefined);
}

function checkBytes(kind: SinkKind, d: Delivered | undefined, w: Written, name: string): void {
  expect(d, `${name}: delivered`).toBeDefined();
  if (!d) return;
  expect(Buffer.compare(d.value, w.payload), `${name}: payload bytes (${d.value.length} vs ${w.payload.length})`).toBe(0);
  expect(d.key, `${name}: key`).toBe(w.key);
  if (kind === 'kafka') expect(d.headers.id, `${name}: id header`).toBe(w.id);
  for (const [k, v] of Object.entries(w.headers ?? {})) expect(d.headers[k], `${name}: header ${k}`).toBe(v);
}

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`bad input corpus → ${kind}`, () => {
    it('dead-letter: every case delivered byte for byte or dead-lettered with its reason, and the row after each flows', async () => {
      await using b = await bundle({ kind, ddl: DDL, tables: TABLES, onPoison: 'dead-letter' });
      const bb = b;
      const relay = bb.start();
      await relay.ready();
      const written: Array<{ c: Case; w: Written; follower: string }> = [];
      for (const [n, c] of cases.entries()) written.push({ c, w: await c.write(bb, n), follower: await follower(bb) });
      await waitDelivered(
        bb.reader,
        written.map((x) => x.follower),
      );
      const all = bb.reader.delivered();
      const letters = all.filter((d) => d.headers['outboxd.error_reason'] !== undefined);
      for (const { c, w } of written) {
        const want = c[kind];
        if ('delivered' in want) {
          checkBytes(kind, arrival(all, w), w, c.name);
          continue;
        }
        // A dead letter: by its id, or (no usable id) by its reason.
        const letter = letters.find((d) => (w.id !== null ? d.headers.id === w.id : d.headers['outboxd.error_reason'] === want.poison));
        expect(letter, `${c.name}: dead letter`).toBeDefined();
        expect(letter?.headers['outboxd.error_reason'], `${c.name}: reason`).toBe(want.poison);
        expect(letter?.headers['outboxd.dead_letter_shrunk'], `${c.name}: shrunk`).toBe(want.shrunk);
        if (w.id !== null) expect(arrival(all, w), `${c.name}: never on the main destination`).toBeUndefined();
      }
      expect(await relay.metric('outboxd_dead_lettered_total')).toBe(cases.filter((c) => 'poison' in c[kind]).length);
      expect((await relay.http('/readyz')).status).toBe(200);
    }, 300_000);

    it('halt: every delivered case flows byte for byte on one relay', async () => {
      await using b = await bundle({ kind, ddl: DDL, tables: TABLES, onPoison: 'halt' });
      const bb = b;
      const relay = bb.start();
      await relay.ready();
      const written: Array<{ c: Case; w: Written }> = [];
      for (const [n, c] of cases.entries()) if ('delivered' in c[kind]) written.push({ c, w: await c.write(bb, n) });
      const last = await follower(bb);
      await waitDelivered(bb.reader, [last]);
      for (const { c, w } of written) checkBytes(kind, arrival(bb.reader.delivered(), w), w, c.name);
      expect((await relay.http('/readyz')).status).toBe(200);
    }, 300_000);

    for (const [n, c] of cases.entries()) {
      const want = c[kind];
      if (!('poison' in want)) continue;
      it(`halt: ${c.name} halts the relay with reason ${want.poison}, and the row after it waits`, async () => {
        await using b = await bundle({ kind, ddl: DDL, tables: TABLES, onPoison: 'halt' });
        const bb = b;
        const relay = bb.start();
        await relay.ready();
        await c.write(bb, n);
        // Nothing at or after the case's commit may be confirmed (heartbeats before it may).
        const caseEnd = await bb.db.walLsn();
        const after = await follower(bb);
        await until('halted', async () => (await relay.http('/readyz')).body.startsWith('not ok: halted'), 60_000);
        expect(await relay.metric('outboxd_poison_messages_total', { reason: want.poison })).toBe(1);
        await relay.heartbeatsPass(2);
        expect(bb.reader.delivered().map((d) => d.id)).not.toContain(after);
        expect((await bb.db.slotInfo())?.confirmed ?? 0n).toBeLessThan(caseEnd);
        expect((await relay.http('/livez')).status).toBe(200);
      }, 120_000);
    }
  });
}
