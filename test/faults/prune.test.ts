import { describe, expect, it } from 'vitest';
import type pg from 'pg';
import { parseConfig } from '../../src/config/load.js';
import type { TableConfig } from '../../src/config/config.js';
import { outboxDdl } from '../../src/commands/setup.js';
import { pgUrl } from '../harness/services.js';
import { until } from '../integration/support.js';
import { type Bundle, bundle, markerOf, sqlStatements, uuid, waitDelivered } from './fixtures.js';

/**
 * Pruning (outbox.prune, docs/adr/0011): only rows the broker confirmed and older than `retain`
 * are deleted, never anything else; real Postgres, a real broker, the relay as a process.
 */

const PRUNE = (mode: 'delete' | 'partitions', extra = '') =>
  `  prune:\n    mode: ${mode}\n    retain: 1h\n    interval: 300ms\n    batchSize: 100\n    pause: 0\n${extra}`;

/** Inserts `n` rows (one transaction) created `age` ago (an interval, or an absolute time); returns their ids. */
async function insertAged(client: pg.Client, types: string[], n: number, age: string | Date, key = 'k'): Promise<string[]> {
  const at = typeof age === 'string' ? `now() - $4::interval` : '$4::timestamptz';
  const ids = Array.from({ length: n }, () => uuid());
  await client.query(
    `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at)
     SELECT id, $2, $3 || (ord % 7), 'Aged', jsonb_build_object('seq', ord), ${at}
       FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, ord)`,
    [ids, types[0], key, typeof age === 'string' ? age : age.toISOString()],
  );
  return ids;
}

/**
 * Waits until the marker's confirmed epoch has been written `n` more times. A round writes it,
 * deletes, then begins the next epoch; so with n = 3 the second round ended an epoch begun after
 * this call, and the third write shows that round's deletes done.
 */
async function roundsPass(b: Bundle, n: number): Promise<void> {
  let last = (await markerOf(b)).epochs.get(b.db.slot)?.at;
  let seen = 0;
  await until(
    `${n} pruning rounds`,
    async () => {
      const at = (await markerOf(b)).epochs.get(b.db.slot)?.at;
      if (at !== undefined && at !== last) {
        last = at;
        seen++;
      }
      return seen >= n;
    },
    30_000,
    50,
  );
}

async function present(b: Bundle, ids: string[]): Promise<number> {
  const { rows } = await b.db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox WHERE id = ANY($1::uuid[])', [ids]);
  return Number(rows[0]?.n);
}

describe('pruning: delete mode', () => {
  it('deletes confirmed rows older than retain, in batches, and keeps younger ones; counts and reports them', async () => {
    await using b = await bundle({ kind: 'rabbitmq', outboxExtra: PRUNE('delete') });
    const relay = b.start();
    await relay.ready();
    const old = await insertAged(b.db.client, b.types, 450, '2 hours');
    const young = await insertAged(b.db.client, b.types, 50, '10 minutes');
    await waitDelivered(b.reader, [...old, ...young], 60_000);
    await until('old rows pruned', async () => (await present(b, old)) === 0, 30_000, 100);
    expect(await present(b, young)).toBe(50);
    expect(await relay.metric('outboxd_pruned_rows_total')).toBe(450);
    expect(await relay.metric('outboxd_confirmed_epoch_xid')).toBeGreaterThan(0);
    // The oldest row left is a young one: between 10 minutes and a bit more.
    await until('oldest age reported', async () => (await relay.metric('outboxd_outbox_oldest_row_age_seconds')) > 0, 10_000, 100);
    const age = await relay.metric('outboxd_outbox_oldest_row_age_seconds');
    expect(age).toBeGreaterThanOrEqual(600);
    expect(age).toBeLessThan(700);
    // The marker records the passed epoch, beside the slot.
    const { rows } = await b.db.client.query<{ c: string }>(
      `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
    );
    const doc = JSON.parse((rows[0]?.c ?? '').slice('outboxd:'.length)) as Record<string, unknown>;
    expect(doc).toMatchObject({ v: 2, slots: [b.db.slot], epochs: { [b.db.slot]: { xid: expect.stringMatching(/^\d+$/) } } });
  });

  it('keeps every row at and after a halted poison row, and what a long transaction holds back', async () => {
    // Debug logging: each pruning round that waits for the watermark says so.
    await using b = await bundle({ kind: 'rabbitmq', onPoison: 'halt', outboxExtra: PRUNE('delete'), extra: 'log:\n  level: debug\n' });
    await b.db.client.query('ALTER TABLE public.outbox ALTER COLUMN aggregateid DROP NOT NULL');
    const relay = b.start();
    await relay.ready();
    const before = await insertAged(b.db.client, b.types, 200, '2 hours');
    await waitDelivered(b.reader, before, 60_000);
    await until('confirmed rows pruned', async () => (await present(b, before)) === 0, 30_000, 100);

    // A long transaction writes an old row and stays open: it holds every epoch's xmin, so rows
    // committed after it began stay too, even once confirmed (pruning cannot tell them apart).
    const { Client } = (await import('pg')).default;
    const longTx = new Client({ connectionString: b.db.url });
    await longTx.connect();
    try {
      await longTx.query('BEGIN');
      const longId = uuid();
      await longTx.query(
        `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at) VALUES ($1, $2, 'long', 'Aged', '{}', now() - interval '2 hours')`,
        [longId, b.types[0]],
      );
      const during = await insertAged(b.db.client, b.types, 50, '2 hours');
      await waitDelivered(b.reader, during, 60_000);
      // Three pruning rounds finish after they were confirmed: the second of them began an epoch
      // after their commit and the third ended it, the one that would delete them if anything could.
      await roundsPass(b, 3);
      expect(await present(b, during)).toBe(50);

      // A poison row (no key) halts the relay; everything committed after it waits behind it,
      // the long transaction's row included.
      const poison = uuid();
      await b.db.client.query(
        `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at) VALUES ($1, $2, NULL, 'Aged', '{}', now() - interval '2 hours')`,
        [poison, b.types[0]],
      );
      const after = await insertAged(b.db.client, b.types, 100, '2 hours');
      await longTx.query('COMMIT');
      await until('halted', async () => (await relay.http('/readyz')).body.includes('halted'), 30_000, 100);
      const pruned = await relay.metric('outboxd_pruned_rows_total');
      expect(pruned).toBe(200);
      // Many rounds later nothing at or after the poison row is gone, nor the rows that the long
      // transaction held back: it ended after the poison row, so no epoch can pass it. Rounds
      // go on: each waits for a watermark that cannot pass the poison row (a debug line).
      const waited = () => relay.logLines().filter((l) => l.msg === 'pruning waits for the watermark to pass the epoch').length;
      const waitedAtHalt = waited();
      await until('five pruning rounds after the halt', async () => waited() >= waitedAtHalt + 5, 30_000, 100);
      expect(await present(b, during)).toBe(50);
      expect(await present(b, [poison])).toBe(1);
      expect(await present(b, after)).toBe(100);
      expect(await present(b, [longId])).toBe(1);
      expect(await relay.metric('outboxd_pruned_rows_total')).toBe(pruned);
    } finally {
      await longTx.end().catch(() => undefined);
    }
  });

  it("freezing does not hide a row's transaction: frozen confirmed rows older than retain go, younger ones stay", async () => {
    await using b = await bundle({ kind: 'rabbitmq', outboxExtra: PRUNE('delete') });
    const old = await insertAged(b.db.client, b.types, 50, '2 hours');
    const young = await insertAged(b.db.client, b.types, 50, '30 minutes');
    await b.db.client.query('VACUUM (FREEZE) public.outbox');
    const relay = b.start();
    await relay.ready();
    const after = await insertAged(b.db.client, b.types, 50, '2 hours');
    await waitDelivered(b.reader, after, 60_000);
    await until('frozen and unfrozen old rows pruned', async () => (await present(b, [...old, ...after])) === 0, 30_000, 100);
    expect(await present(b, young)).toBe(50);
  });

  it('gives up a round whose DELETE waits for a lock past prune.lockTimeout, and prunes once the lock is gone', async () => {
    await using b = await bundle({ kind: 'rabbitmq', outboxExtra: PRUNE('delete', '    lockTimeout: 100ms\n') });
    const relay = b.start();
    await relay.ready();
    const old = await insertAged(b.db.client, b.types, 100, '2 hours');
    await waitDelivered(b.reader, old, 60_000);
    const { Client } = (await import('pg')).default;
    const locker = new Client({ connectionString: b.db.url });
    await locker.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE public.outbox IN SHARE MODE');
      await until(
        'a round gave up',
        async () => (await relay.metric('outboxd_prune_skipped_total', { reason: 'lock_timeout' })) > 0,
        30_000,
        100,
      );
      expect(await present(b, old)).toBe(100);
      await locker.query('ROLLBACK');
    } finally {
      await locker.end().catch(() => undefined);
    }
    await until('pruned after the lock', async () => (await present(b, old)) === 0, 30_000, 100);
  });
});

for (const major of [15, 17] as const) {
  describe(`pruning: partition mode (PostgreSQL ${major})`, () => {
    it('streams every row of a partitioned outbox under its own name, keeps partitions ahead, drops whole confirmed old ones', async () => {
      const table = parseConfig('postgres:\n  url: postgres://u@h/db\n', {}).outbox.tables[0] as TableConfig;
      const day = 86_400_000;
      const today = Math.floor(Date.now() / day) * day;
      const iso = (ms: number) => new Date(ms).toISOString();
      await using b = await bundle({
        kind: 'kafka',
        pgUrl: await pgUrl(major),
        ddl: [
          ...sqlStatements(outboxDdl(table, { premake: 1 })),
          // An old day's partition, three days back.
          `CREATE TABLE public.outbox_pold PARTITION OF public.outbox FOR VALUES FROM ('${iso(today - 3 * day)}') TO ('${iso(today - 2 * day)}')`,
        ],
        outboxExtra: PRUNE('partitions', '    premake: 4\n'),
      });
      const relay = b.start();
      await relay.ready();
      const oldIds = await insertAged(b.db.client, b.types, 120, new Date(today - 3 * day + 12 * 3_600_000), 'old'); // in outbox_pold
      const strayIds = await insertAged(b.db.client, b.types, 30, '10 days', 'stray'); // no daily partition: the default one
      const todayIds = await insertAged(b.db.client, b.types, 50, '1 minute', 'now');
      await waitDelivered(b.reader, [...oldIds, ...strayIds, ...todayIds], 60_000);
      // Every row arrived under the table's own name: the mapping's destination and key.
      for (const m of b.reader.delivered()) {
        expect(m.stream.startsWith(`outbox.event.${b.types[0]}/`)).toBe(true);
        expect(m.key).toMatch(/^(old|stray|now)\d$/);
      }
      const exists = async (name: string) => (await b.db.client.query('SELECT 1 FROM pg_class WHERE relname = $1', [name])).rows.length > 0;
      await until('old partition dropped', async () => !(await exists('outbox_pold')), 30_000, 100);
      await until('stray rows pruned from the default partition', async () => (await present(b, strayIds)) === 0, 30_000, 100);
      expect(await present(b, todayIds)).toBe(50);
      expect(await relay.metric('outboxd_pruned_partitions_total')).toBe(1);
      expect(await relay.metric('outboxd_pruned_rows_total')).toBe(30);
      // premake 4: today's partition and the next four exist (setup made two, the relay the rest).
      for (let d = 0; d <= 4; d++) {
        const name = `outbox_p${iso(today + d * day)
          .slice(0, 10)
          .replace(/-/g, '')}`;
        await until(`partition ${name}`, () => exists(name), 10_000, 100);
      }
      expect(await relay.metric('outboxd_partitions_created_total')).toBe(3);
      // Rows written to a partition the relay made stream like any other.
      const later = uuid();
      await b.db.client.query(
        `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at) VALUES ($1, $2, 'later', 'T', '{}', now() + interval '3 days')`,
        [later, b.types[0]],
      );
      await waitDelivered(b.reader, [later], 30_000);
    });
  });
}

describe('pruning: a publication without publish_via_partition_root', () => {
  it('is a config error naming the ALTER PUBLICATION, before anything streams', async () => {
    const table = parseConfig('postgres:\n  url: postgres://u@h/db\n', {}).outbox.tables[0] as TableConfig;
    await using b = await bundle({
      kind: 'rabbitmq',
      ddl: [
        ...sqlStatements(outboxDdl(table, { premake: 0 })),
        `CREATE PUBLICATION outboxd FOR TABLE public.outbox WITH (publish = 'insert')`,
      ],
    });
    const relay = b.start();
    expect(await relay.exited).toBe(3);
    // In the JSON log line, the quoted publication name's quotes are escaped.
    expect(relay.stderr).toContain(String.raw`ALTER PUBLICATION \"outboxd\" SET (publish_via_partition_root = true)`);
  });
});
