import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { outboxDdl } from '../../src/commands/setup.js';
import type { TableConfig } from '../../src/config/config.js';
import { parseConfig } from '../../src/config/load.js';
import { MAIN, until } from '../integration/support.js';
import { bundle, markerOf, sqlStatements, waitDelivered } from './fixtures.js';

/**
 * Issue 21, findings 5 and 8: a publication or table shape under which some outbox rows are never
 * sent. Such rows would count as confirmed (the watermark passes them) and be pruned. Each shape is
 * refused at start (exit 3, one line naming the fix) and by `validate --connect`; and pruning a
 * sub-partitioned outbox deletes leaf by leaf, never a row of another leaf that shares a ctid.
 * Real PostgreSQL 15 (row filters and column lists exist from 15).
 */

const TABLE = parseConfig('postgres:\n  url: postgres://u@h/db\n', {}).outbox.tables[0] as TableConfig;

const SHAPES: Array<{ name: string; ddl: string[]; says: RegExp }> = [
  {
    name: 'a publication that does not publish inserts',
    ddl: [`CREATE PUBLICATION outboxd FOR TABLE public.outbox WITH (publish = 'update, delete')`],
    says: /publication outboxd does not publish inserts.*ALTER PUBLICATION \\?"outboxd\\?" SET \(publish = 'insert'\)/,
  },
  {
    name: 'a row filter',
    ddl: [`CREATE PUBLICATION outboxd FOR TABLE public.outbox WHERE (aggregatetype <> 'internal') WITH (publish = 'insert')`],
    says: /publication outboxd filters the rows of table public\.outbox \(WHERE .*internal.*\).*DROP TABLE .*ADD TABLE/,
  },
  {
    name: 'a column list without a mapped column',
    ddl: [
      `CREATE PUBLICATION outboxd FOR TABLE public.outbox (id, aggregatetype, aggregateid, type, payload, created_at) WITH (publish = 'insert')`,
    ],
    says: /publication outboxd leaves column\(s\) headers, correlation_id, causation_id, reply_to, traceparent of table public\.outbox out/,
  },
  {
    name: 'a table with inheritance children',
    ddl: ['CREATE TABLE public.outbox_eu () INHERITS (public.outbox)'],
    says: /table public\.outbox has inheritance children \("?public"?\."?outbox_eu"?\): their rows are published under each child's own name/,
  },
];

describe('an outbox publication or table that would send only some rows', () => {
  for (const shape of SHAPES) {
    it(`${shape.name}: run exits 3 naming the fix, validate --connect fails, nothing streams`, async () => {
      await using b = await bundle({ kind: 'kafka', ddl: [...sqlStatements(outboxDdl(TABLE)), ...shape.ddl] });
      const relay = b.start();
      expect(await relay.exited).toBe(3);
      expect(relay.stderr).toMatch(shape.says);
      const { rows } = await b.db.client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [b.db.slot]);
      expect(rows).toHaveLength(0);
      const v = spawnSync(process.execPath, [MAIN, 'validate', '-c', b.configFile, '--connect'], { encoding: 'utf8' });
      expect(v.status).toBe(1);
      expect(v.stdout).toMatch(new RegExp(`fail  publication content: .*${shape.says.source.slice(0, 20).replace(/\\\\\?"/g, '')}`));
    });
  }
});

describe('pruning a sub-partitioned outbox', () => {
  it('deletes leaf by leaf at every level: a young row in a sibling leaf at the same ctid stays', async () => {
    const ddl = [
      `CREATE TABLE public.outbox (
         id uuid NOT NULL DEFAULT gen_random_uuid(), aggregatetype text NOT NULL, aggregateid text NOT NULL, type text,
         payload jsonb NOT NULL, headers jsonb, correlation_id text, causation_id text, reply_to text, traceparent text,
         created_at timestamptz NOT NULL DEFAULT now()) PARTITION BY RANGE (created_at)`,
      // One range partition for all time, itself partitioned by key: two leaves.
      `CREATE TABLE public.outbox_all PARTITION OF public.outbox FOR VALUES FROM (MINVALUE) TO (MAXVALUE) PARTITION BY LIST (aggregateid)`,
      `CREATE TABLE public.outbox_old PARTITION OF public.outbox_all FOR VALUES IN ('old')`,
      `CREATE TABLE public.outbox_young PARTITION OF public.outbox_all FOR VALUES IN ('young')`,
      `CREATE TABLE public.outbox_rest PARTITION OF public.outbox_all DEFAULT`,
      `CREATE PUBLICATION outboxd FOR TABLE public.outbox WITH (publish = 'insert', publish_via_partition_root = true)`,
    ];
    await using b = await bundle({
      kind: 'kafka',
      ddl,
      outboxExtra: '  prune:\n    mode: delete\n    retain: 10m\n    interval: 300ms\n',
    });
    const relay = b.start();
    await relay.ready();
    // Old rows in one leaf, young rows in the other: both leaves start at ctid (0,1).
    const insert = async (key: string, age: string) =>
      (
        await b.db.client.query<{ id: string }>(
          `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, created_at)
           SELECT $1, $2, 'T', '{}', now() - $3::interval FROM generate_series(1, 5) RETURNING id::text`,
          [b.types[0], key, age],
        )
      ).rows;
    const old = await insert('old', '1 hour');
    const young = await insert('young', '0 s');
    const ctids = await b.db.client.query<{ leaf: string; ctid: string }>(
      'SELECT tableoid::regclass::text AS leaf, ctid::text FROM public.outbox ORDER BY 1, 2',
    );
    const byLeaf = (leaf: string) => ctids.rows.filter((r) => r.leaf.endsWith(leaf)).map((r) => r.ctid);
    // The shape this test needs: the leaves share ctids.
    expect(byLeaf('outbox_old').some((c) => byLeaf('outbox_young').includes(c))).toBe(true);
    await waitDelivered(
      b.reader,
      [...old, ...young].map((r) => r.id),
    );
    await until(
      'the old rows pruned',
      async () => (await b.db.client.query(`SELECT 1 FROM public.outbox_old`)).rows.length === 0,
      30_000,
      200,
    );
    // Two more epochs pass; the young rows stay.
    const at = (await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0';
    await until(
      'two more epochs',
      async () => BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0') > BigInt(at) + 1n,
      30_000,
      100,
    );
    expect(await relay.metric('outboxd_pruned_rows_total')).toBe(5);
    const { rows } = await b.db.client.query<{ n: string }>(`SELECT count(*) AS n FROM public.outbox_young`);
    expect(Number(rows[0]?.n)).toBe(5);
  });
});
