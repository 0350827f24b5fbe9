import { describe, expect, it } from 'vitest';
import { until } from '../integration/support.js';
import {
  type Bundle,
  type SinkKind,
  bundle,
  expectOneTooLargeDeadLettered,
  insertOneTooLarge,
  limitTopicMessageBytes,
  uuid,
  waitDelivered,
} from './fixtures.js';

/**
 * Poison rows: a null key, a missing route, a payload over the broker's size limit, and text
 * that is not UTF-8. Under `halt` the slot stays put and the relay says so; under
 * `dead-letter` the message reaches the dead-letter destination with the error and the stream
 * goes on.
 */

const PERMISSIVE = [
  'ALTER TABLE public.outbox ALTER COLUMN aggregateid DROP NOT NULL',
  'ALTER TABLE public.outbox ALTER COLUMN aggregatetype DROP NOT NULL',
];

interface Case {
  reason: string;
  insert: (b: Bundle, id: string) => Promise<void>;
}

const cases: Case[] = [
  {
    reason: 'null_key',
    insert: (b, id) =>
      b.db.client
        .query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, NULL, 'T', '{"p":1}')`, [
          id,
          b.types[0],
        ])
        .then(() => undefined),
  },
  {
    reason: 'missing_route',
    insert: (b, id) =>
      b.db.client
        .query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, NULL, 'k', 'T', '{"p":1}')`, [id])
        .then(() => undefined),
  },
  {
    reason: 'oversized',
    insert: (b, id) =>
      b.db.client
        .query(
          `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', jsonb_build_object('blob', repeat('x', 200000)))`,
          [id, b.types[0]],
        )
        .then(() => undefined),
  },
];

/** Both sinks get the same small message limit, so that the oversized case is cheap to build. */
const SINK_EXTRA = '    maxMessageBytes: 64KiB\n';

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`poison rows → ${kind}`, () => {
    for (const c of cases) {
      it(`halt: ${c.reason} stops the slot before it, not ready, logged and counted`, async () => {
        await using b = await bundle({ kind, sinkExtra: SINK_EXTRA });
        for (const stmt of PERMISSIVE) await b.db.client.query(stmt);
        const relay = b.start();
        await relay.ready();
        const good = uuid();
        await b.db.client.query(
          `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', '{"seq":1}')`,
          [good, b.types[0]],
        );
        await waitDelivered(b.reader, [good]);
        const before = await b.db.walLsn();
        const bad = uuid();
        await c.insert(b, bad);
        await until('halted', async () => (await relay.http('/readyz')).body.startsWith('not ok: halted'), 30_000);
        expect(await relay.metric('outboxd_poison_messages_total', { reason: c.reason })).toBe(1);
        // The probes name the reason; the row's id is in the log only, never in an unauthenticated body.
        expect((await relay.http('/readyz')).body).toContain(`a poison message (reason ${c.reason})`);
        for (const path of ['/readyz', '/livez', '/metrics']) expect((await relay.http(path)).body).not.toContain(bad);
        expect(relay.stderr).toMatch(/poison message: halting/);
        expect(relay.logLines().some((l) => l.level === 'error' && l.reason === c.reason)).toBe(true);
        // Heartbeats keep committing, but nothing at or after the poison transaction is confirmed.
        await relay.heartbeatsPass(2);
        expect((await b.db.slotInfo())?.confirmed ?? 0n).toBeLessThanOrEqual(before);
        expect((await relay.http('/livez')).status).toBe(200);
      });

      it(`dead-letter: ${c.reason} goes to the dead-letter destination with the error, the stream goes on`, async () => {
        await using b = await bundle({ kind, sinkExtra: SINK_EXTRA, onPoison: 'dead-letter' });
        for (const stmt of PERMISSIVE) await b.db.client.query(stmt);
        const relay = b.start();
        await relay.ready();
        const bad = uuid();
        const good = uuid();
        await c.insert(b, bad);
        await b.db.client.query(
          `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'k', 'T', '{"seq":1}')`,
          [good, b.types[0]],
        );
        await waitDelivered(b.reader, [bad, good]);
        const dead = b.reader.delivered().find((d) => d.id === bad);
        expect(dead?.headers['outboxd.error_reason']).toBe(c.reason);
        expect(dead?.headers['outboxd.error']).toBeTruthy();
        expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
        expect((await relay.http('/readyz')).status).toBe(200);
        // The slot moves on past the poison transaction.
        const end = await b.db.walLsn();
        await until('slot past the poison row', async () => ((await b.db.slotInfo())?.confirmed ?? 0n) >= end - 100_000n, 20_000);
      });
    }
  });
}

describe('poison rows: text that is not UTF-8', () => {
  // A SQL_ASCII database accepts any bytes in text. outboxd reads them as stored (client
  // encoding SQL_ASCII) and makes a value that is not UTF-8 poison, under the policy.
  const sqlAscii = {
    kind: 'kafka' as const,
    encoding: 'SQL_ASCII' as const,
    ddl: ['CREATE TABLE public.outbox (id text PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload text)'],
  };
  const insertBad = (b: Bundle) =>
    b.db.client.query(`INSERT INTO public.outbox VALUES ('bad-1', $1, 'k', 'T', 'caf' || convert_from('\\xe9'::bytea, 'SQL_ASCII'))`, [
      b.types[0],
    ]);

  it('halt: stops before it with reason bad_encoding, never relayed with replacement characters', async () => {
    await using b = await bundle({ ...sqlAscii, onPoison: 'halt' });
    const relay = b.start();
    await relay.ready();
    const before = await b.db.walLsn();
    await insertBad(b);
    await until('halted', async () => (await relay.http('/readyz')).body.startsWith('not ok: halted'), 30_000);
    expect(await relay.metric('outboxd_poison_messages_total', { reason: 'bad_encoding' })).toBe(1);
    expect((await relay.http('/readyz')).body).toMatch(/a poison message \(reason bad_encoding\)/);
    expect(relay.stderr).toMatch(/column payload holds bytes that are not valid UTF-8/);
    await relay.heartbeatsPass(2);
    expect((await b.db.slotInfo())?.confirmed ?? 0n).toBeLessThanOrEqual(before);
    expect(b.reader.delivered()).toEqual([]);
  });

  it('dead-letter: dead-letters it with reason bad_encoding, and the valid UTF-8 rows around it flow as written', async () => {
    await using b = await bundle({ ...sqlAscii, onPoison: 'dead-letter' });
    const relay = b.start();
    await relay.ready();
    await insertBad(b);
    await b.db.client.query(`INSERT INTO public.outbox VALUES ('good-1', $1, 'k', 'T', 'caf\u00e9 ✓')`, [b.types[0]]);
    await waitDelivered(b.reader, ['bad-1', 'good-1']);
    const dead = b.reader.delivered().find((d) => d.id === 'bad-1');
    expect(dead?.headers['outboxd.error_reason']).toBe('bad_encoding');
    const good = b.reader.delivered().find((d) => d.id === 'good-1');
    expect(good?.headers['outboxd.error_reason']).toBeUndefined();
    expect(JSON.stringify(b.reader.delivered())).not.toContain('\uFFFD');
  });
});

describe('poison rows: a message the Kafka broker refuses, at least once', () => {
  // The topic's own limit is smaller than the relay's (1 MiB): only the broker can tell. The
  // relay finds the refused message by sending the chunk's messages one at a time, on a fresh
  // producer: a partly refused send may leave the old one's sequence numbers in doubt.
  // The third case limits the dead-letter topic too: the broker refuses the dead letter's full
  // form as well, and a smaller one goes instead (sink/dead-letter.ts).
  for (const [workers, smallDeadLetters] of [
    [0, false],
    [1, false],
    [0, true],
  ] as const) {
    it(`workers ${workers}${smallDeadLetters ? ', the dead-letter topic limited too' : ''}: the refused message is dead-lettered; the others arrive, in order`, async () => {
      await using b = await bundle({ kind: 'kafka', onPoison: 'dead-letter' });
      const topic = `outbox.event.${b.types[0]}`;
      await limitTopicMessageBytes(topic, 4096);
      if (smallDeadLetters) await limitTopicMessageBytes(`dlq_${b.db.name.slice(2, 8)}`, 4096);
      const relay = b.start({ OUTBOXD_TEST_WORKERS: String(workers) });
      await relay.ready();
      await insertOneTooLarge(b);
      await expectOneTooLargeDeadLettered(b, topic);
      const letter = b.reader.delivered().find((d) => !d.stream.startsWith(`${topic}/`));
      // Full form: the 20 KB payload as its body; on a topic that refuses it, a form that fits.
      expect((letter?.value.length ?? 0) > 4096).toBe(!smallDeadLetters);
      expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
      expect(await relay.metric('outboxd_poison_messages_total', { reason: 'oversized' })).toBe(1);
      // The slot moves on past the poison transaction.
      const end = await b.db.walLsn();
      await until('slot past the poison row', async () => ((await b.db.slotInfo())?.confirmed ?? 0n) >= end - 100_000n, 20_000);
    });
  }
});
