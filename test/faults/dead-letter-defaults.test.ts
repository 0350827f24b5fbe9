import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { PoisonReason } from '../../src/errors.js';
import { OUTBOX_DDL, type RelayProcess, until } from '../integration/support.js';
import { type Bundle, type Delivered, type Reader, type SinkKind, bundle } from './fixtures.js';

/**
 * Every poison reason under `onPoison: dead-letter`, with the templates and dead-letter settings
 * a new user gets: Kafka's topic `outbox.event.{aggregatetype}`, RabbitMQ's routing key
 * `{aggregatetype}.{type}` and no `deadLetterRoutingKey` (a dead letter takes its message's own
 * routing key; the test's dead-letter queue is bound with `#`). Only the names of the
 * dead-letter topic and exchange are the test's own. A dead letter must always be publishable:
 * the relay stays up, every good row around the poison arrives, every poison row arrives as a
 * dead letter with its reason (issue 21, finding 4: a 300-byte `type` made the RabbitMQ relay
 * exit SINK_FATAL on its dead letter's routing key, on every restart).
 *
 * Reasons left out, and why:
 * - `rejected`: the broker or client refusing a message the relay's own checks passed. No input
 *   reaches it: the checks exist so that it does not happen (a legal topic name, the size, every
 *   AMQP limit).
 * - `missing_ce_attribute`, `bad_ce_attribute`: only with `sink.cloudevents` on; it is off by default.
 * - Kafka has no 255-byte fields and no 64 KiB header table, so `field_too_long` and
 *   `headers_too_large` are RabbitMQ's only: the same rows are delivered as written on Kafka.
 */

/** What a case must come to on one broker: delivered as written, or dead-lettered with this reason. */
type Outcome = 'delivered' | PoisonReason;

interface Case {
  name: string;
  /** Writes the row (or logical message) in a transaction of its own. */
  write(b: Bundle): Promise<Written>;
  kafka: Outcome;
  rabbitmq: Outcome;
  /** More about its dead letter, where there is more to say. */
  letter?: (d: Delivered, kind: SinkKind) => void;
}

interface Written {
  /** Its transaction's xid as the `outboxd.xid` header has it: how its dead letter is found. */
  xid: string;
  /** The row's id, or null for a logical message. */
  id: string | null;
}

const DDL = [
  OUTBOX_DDL,
  // Permissive, so that rows of every kind of poison can be written at all.
  'ALTER TABLE public.outbox ALTER COLUMN id DROP DEFAULT, ALTER COLUMN id TYPE text',
  'ALTER TABLE public.outbox ALTER COLUMN aggregatetype DROP NOT NULL, ALTER COLUMN aggregateid DROP NOT NULL',
  'ALTER TABLE public.outbox ALTER COLUMN payload DROP NOT NULL',
];

const MiB = 1024 * 1024;
/** Xid of the current transaction, 32 bits as pgoutput (and so the `outboxd.xid` header) has it. */
const XID = '(pg_current_xact_id()::text::bigint % 4294967296)::text AS xid';

interface Row {
  id?: string | null;
  aggregatetype?: string | null;
  aggregateid?: string | null;
  type?: string | null;
  payload?: string | null;
  headers?: string | null;
}

async function row(b: Bundle, r: Row): Promise<Written> {
  const id = r.id === undefined ? `p-${randomUUID()}` : r.id;
  const { rows } = await b.db.client.query<{ xid: string }>(
    `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES ($1, $2, $3, $4, $5, $6) RETURNING ${XID}`,
    [
      id,
      r.aggregatetype === undefined ? b.types[0] : r.aggregatetype,
      r.aggregateid === undefined ? 'k' : r.aggregateid,
      r.type === undefined ? 'T' : r.type,
      r.payload === undefined ? '{"p":1}' : r.payload,
      r.headers ?? null,
    ],
  );
  return { xid: rows[0]?.xid as string, id };
}

/** A transactional logical decoding message with the default prefix. */
async function emit(b: Bundle, content: Buffer): Promise<Written> {
  const { rows } = await b.db.client.query<{ xid: string }>(`SELECT ${XID} FROM pg_logical_emit_message(true, 'outbox', $1::bytea)`, [
    content,
  ]);
  return { xid: rows[0]?.xid as string, id: null };
}

const cases: Case[] = [
  { name: 'an empty id', write: (b) => row(b, { id: '' }), kafka: 'missing_id', rabbitmq: 'missing_id' },
  { name: 'a null aggregateid', write: (b) => row(b, { aggregateid: null }), kafka: 'null_key', rabbitmq: 'null_key' },
  { name: 'a null aggregatetype', write: (b) => row(b, { aggregatetype: null }), kafka: 'missing_route', rabbitmq: 'missing_route' },
  // RabbitMQ's default routing key uses {type}; Kafka's topic does not.
  { name: 'a null type', write: (b) => row(b, { type: null }), kafka: 'delivered', rabbitmq: 'missing_route' },
  { name: 'a null payload', write: (b) => row(b, { payload: null }), kafka: 'missing_payload', rabbitmq: 'missing_payload' },
  {
    name: 'a headers column that is no object',
    write: (b) => row(b, { headers: '[1, 2]' }),
    kafka: 'bad_headers',
    rabbitmq: 'bad_headers',
  },
  {
    name: 'a logical message that is not JSON',
    write: (b) => emit(b, Buffer.from('not json')),
    kafka: 'bad_message',
    rabbitmq: 'bad_message',
  },
  {
    name: 'a logical message whose bytes are not UTF-8',
    write: (b) => emit(b, Buffer.from([0x7b, 0x22, 0xe9, 0x22, 0x7d])),
    kafka: 'bad_encoding',
    rabbitmq: 'bad_encoding',
  },
  {
    // Over the in-flight bound (4 MiB in the fixture), so over both sinks' value limit: never decoded.
    name: 'a payload of 4.5 MiB',
    write: (b) => row(b, { payload: JSON.stringify({ blob: 'x'.repeat(4.5 * MiB) }) }),
    kafka: 'oversized',
    rabbitmq: 'oversized',
  },
  {
    // The column fits the 1 MiB value limit, the message does not. Kafka: the dead letter
    // cannot carry that key either (it was its record key, and broke the broker's limit in every
    // form). RabbitMQ: the key is the aggregateid header, over the 64 KiB header table.
    name: 'an aggregateid just under 1 MiB',
    write: (b) => row(b, { aggregateid: 'k'.repeat(MiB - 64) }),
    kafka: 'oversized',
    rabbitmq: 'headers_too_large',
    letter: (d, kind) => {
      expect(d.headers['outboxd.dead_letter_shrunk']).toBe('payload,headers,key');
      if (kind === 'kafka') expect(d.key, 'no record key').toBe('');
      else expect(d.headers.aggregateid).toBeUndefined();
    },
  },
  // RabbitMQ's main queue is bound to `*.T` only.
  { name: 'a type no queue is bound for', write: (b) => row(b, { type: 'U' }), kafka: 'delivered', rabbitmq: 'unroutable' },
  {
    name: 'an aggregatetype that is not a legal topic name',
    write: (b) => row(b, { aggregatetype: `${b.types[0]} with spaces` }),
    kafka: 'unroutable',
    rabbitmq: 'delivered',
  },
  {
    // Kafka: a topic name over 249 characters. RabbitMQ: a routing key over 255 bytes, and so
    // the dead letter's own routing key: it falls back to `poison`.
    name: 'a 300-byte aggregatetype',
    write: (b) => row(b, { aggregatetype: `a${'x'.repeat(299)}` }),
    kafka: 'unroutable',
    rabbitmq: 'field_too_long',
    letter: (d, kind) => {
      if (kind === 'kafka') return;
      expect(d.routingKey).toBe('poison');
      expect(d.headers['outboxd.dead_letter_routing_key_fallback']).toMatch(/routing key is 3\d\d bytes; AMQP allows at most 255$/);
    },
  },
  {
    // Issue 21, finding 4.
    name: 'a 300-byte type',
    write: (b) => row(b, { type: 't'.repeat(300) }),
    kafka: 'delivered',
    rabbitmq: 'field_too_long',
    letter: (d, kind) => {
      if (kind === 'kafka') return;
      expect(d.routingKey).toBe('poison');
      expect(d.headers['outboxd.dead_letter_routing_key_fallback']).toMatch(/routing key is 3\d\d bytes; AMQP allows at most 255$/);
    },
  },
  {
    // RabbitMQ: over the message id's 255 bytes, and too long for the dead letter's header
    // table: its dead letter leaves the id out and says so.
    name: 'an id of 70 KB',
    write: (b) => row(b, { id: `i-${randomUUID()}-${'i'.repeat(70_000)}` }),
    kafka: 'delivered',
    rabbitmq: 'field_too_long',
  },
  {
    name: 'a header table over 64 KiB',
    write: (b) => row(b, { headers: JSON.stringify({ big: 'h'.repeat(70_000) }) }),
    kafka: 'delivered',
    rabbitmq: 'headers_too_large',
  },
];

/** A row every sink delivers: type T, so it routes on RabbitMQ's `*.T` binding too. */
async function good(b: Bundle, seq: number): Promise<string> {
  const id = `good-${randomUUID()}`;
  await row(b, { id, payload: JSON.stringify({ seq }) });
  return id;
}

/** The fixture with a new user's dead-letter settings: on RabbitMQ no deadLetterRoutingKey, the DLQ bound with `#`. */
function defaults(kind: SinkKind): Promise<Bundle> {
  return bundle({ kind, ddl: DDL, onPoison: 'dead-letter', deadLetterRoutingKey: null, mainBinding: '*.T' });
}

/** The relay's error and fatal log lines, each cut to 400 characters (a 1 MiB key would drown the rest). */
function lastWords(relay: RelayProcess): string {
  const lines = relay.stderr.split('\n').filter((l) => /"level":"(?:error|fatal)"/.test(l));
  return lines.length > 0 ? lines.map((l) => l.slice(0, 400)).join('\n') : relay.stderr.slice(-400);
}

/** Waits until every id arrived, failing at once (with its last words) if the relay exits meanwhile. */
async function deliveredWhileRunning(relay: RelayProcess, reader: Reader, ids: readonly string[]): Promise<void> {
  const want = new Set(ids);
  try {
    await until(
      `${want.size} messages delivered`,
      async () => {
        for (const d of reader.delivered()) want.delete(d.id);
        return want.size === 0;
      },
      120_000,
      250,
      {
        abortReason: () => (relay.child.exitCode !== null ? `outboxd exited with ${relay.child.exitCode}: ${lastWords(relay)}` : undefined),
      },
    );
  } catch (err) {
    const missing = [...want].map((id) => id.slice(0, 60)).join(', ');
    throw new Error(`${(err as Error).message}; missing: ${missing}; outboxd said: ${lastWords(relay)}`);
  }
}

const isLetter = (d: Delivered) => d.headers['outboxd.error_reason'] !== undefined;

/** On the dead-letter topic (its stream is `dlq_…/<partition>`) or queue (`dlq_…`). */
const onDeadLetterDestination = (d: Delivered) => d.stream.startsWith('dlq_');

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`dead letters with the default templates → ${kind}`, () => {
    it('every poison reason is dead-lettered with its reason, every good row around it arrives, and the relay never exits', async () => {
      await using b = await defaults(kind);
      const relay = b.start();
      await relay.ready();
      const goods = [await good(b, 0)];
      const written: Array<{ c: Case; w: Written }> = [];
      for (const [n, c] of cases.entries()) {
        written.push({ c, w: await c.write(b) });
        goods.push(await good(b, n + 1));
      }
      const end = await b.db.walLsn();
      const expectedIds = [...goods, ...written.filter(({ c }) => c[kind] === 'delivered').map(({ w }) => w.id as string)];
      await deliveredWhileRunning(relay, b.reader, expectedIds);
      const poisoned = written.filter(({ c }) => c[kind] !== 'delivered');
      await until(
        `${poisoned.length} dead letters`,
        async () => b.reader.delivered().filter(isLetter).length >= poisoned.length,
        60_000,
        250,
        {
          abortReason: () =>
            relay.child.exitCode !== null ? `outboxd exited with ${relay.child.exitCode}: ${lastWords(relay)}` : undefined,
        },
      );

      const all = b.reader.delivered();
      for (const id of expectedIds) {
        const d = all.find((x) => x.id === id && !isLetter(x));
        expect(d, `${id.slice(0, 60)}: on the main destination`).toBeDefined();
        expect(onDeadLetterDestination(d as Delivered), `${id.slice(0, 60)}: not a dead letter`).toBe(false);
      }
      const letters = all.filter(isLetter);
      for (const { c, w } of poisoned) {
        const letter = letters.find((d) => d.headers['outboxd.xid'] === w.xid);
        expect(letter, `${c.name}: dead letter`).toBeDefined();
        expect(letter?.headers['outboxd.error_reason'], `${c.name}: reason`).toBe(c[kind]);
        expect(onDeadLetterDestination(letter as Delivered), `${c.name}: on the dead-letter destination`).toBe(true);
        // A non-empty id rides along unless it is too long to (the smallest form names what it left out).
        if (w.id && w.id.length <= 1024) expect(letter?.headers.id, `${c.name}: id header`).toBe(w.id);
        if (w.id !== null && w.id.length > 1024) expect(letter?.headers['outboxd.dead_letter_shrunk']).toMatch(/\bid\b/);
        if (w.id)
          expect(
            all.some((d) => d.id === w.id && !isLetter(d)),
            `${c.name}: never on the main destination`,
          ).toBe(false);
        if (kind === 'rabbitmq') {
          // Its message's own routing key when it has one that fits AMQP, else the fixed `poison`.
          const own = letter?.headers['outboxd.original_destination'];
          expect(letter?.routingKey, `${c.name}: routing key`).toBe(own !== undefined && own.length <= 255 ? own : 'poison');
        }
        c.letter?.(letter as Delivered, kind);
      }
      expect(letters).toHaveLength(poisoned.length);
      expect(await relay.metric('outboxd_dead_lettered_total')).toBe(poisoned.length);
      for (const reason of new Set(poisoned.map(({ c }) => c[kind]))) {
        const n = poisoned.filter(({ c }) => c[kind] === reason).length;
        expect(await relay.metric('outboxd_poison_messages_total', { reason }), reason).toBe(n);
      }
      // Still up and ready, and the slot moves past everything.
      expect((await relay.http('/readyz')).status).toBe(200);
      await until('slot past the last row', async () => ((await b.db.slotInfo())?.confirmed ?? 0n) >= end, 30_000, 250);
      expect(relay.child.exitCode).toBeNull();
    }, 300_000);
  });
}

describe('issue 21, finding 4: a row whose type is 300 bytes', () => {
  it('rabbitmq: is dead-lettered under the fallback key "poison", which a header explains, and the relay keeps running', async () => {
    await using b = await defaults('rabbitmq');
    const relay = b.start();
    await relay.ready();
    const before = await good(b, 1);
    const type = 't'.repeat(300);
    const destination = `${b.types[0]}.${type}`;
    const bad = await row(b, { type });
    const after = await good(b, 2);
    await deliveredWhileRunning(relay, b.reader, [before, bad.id as string, after]);
    const letter = b.reader.delivered().find((d) => d.id === bad.id);
    expect(letter?.headers['outboxd.error_reason']).toBe('field_too_long');
    expect(letter?.routingKey).toBe('poison');
    expect(letter?.headers['outboxd.dead_letter_routing_key_fallback']).toBe(
      `the message's own routing key: AMQP routing key is ${destination.length} bytes; AMQP allows at most 255`,
    );
    expect(letter?.headers['outboxd.original_destination']).toBe(destination);
    // A good row keeps its own routing key.
    expect(b.reader.delivered().find((d) => d.id === after)?.routingKey).toBe(`${b.types[0]}.T`);
    await relay.heartbeatsPass(2);
    expect((await relay.http('/readyz')).status).toBe(200);
    expect(relay.child.exitCode).toBeNull();
  });

  it('kafka: is delivered as written (its topic does not use type, and Kafka has no 255-byte fields)', async () => {
    await using b = await defaults('kafka');
    const relay = b.start();
    await relay.ready();
    const type = 't'.repeat(300);
    const bad = await row(b, { type });
    const after = await good(b, 1);
    await deliveredWhileRunning(relay, b.reader, [bad.id as string, after]);
    const d = b.reader.delivered().find((x) => x.id === bad.id);
    expect(d?.headers.type).toBe(type);
    expect(d?.headers['outboxd.error_reason']).toBeUndefined();
    expect(relay.child.exitCode).toBeNull();
  });
});
