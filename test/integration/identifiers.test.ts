import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type Bundle, type Delivered, bundle, waitDelivered } from '../faults/fixtures.js';
import { CliProcess, until } from './support.js';

/**
 * Identifiers that are SQL key words (`user`, `current_date`, `session_user`, `current_user`) or
 * mixed case (`Order`) name columns, tables, schemas and publications like any other: the live
 * relay, `outboxd replay`, `outboxd setup` and pruning read and write the table's own values.
 * Left unquoted, `SELECT user::text` is the current role's name and `current_date` is today:
 * wrong values, published without a word.
 */

const REPLAY = 'outboxd-replay';

const KEYWORD_TABLE = `CREATE TABLE public.outbox (
  id uuid PRIMARY KEY,
  aggregatetype text NOT NULL,
  "user" text NOT NULL,
  "current_date" text,
  "session_user" jsonb NOT NULL,
  headers jsonb,
  "current_user" text,
  "__proto__" text,
  created_at timestamptz NOT NULL DEFAULT now()
)`;

interface Row {
  id: string;
  user: string;
  current_date: string | null;
  payload: string;
  current_user: string | null;
  proto: string | null;
}

/** The table's own values, as text: what every message must carry. */
async function tableRows(b: Bundle): Promise<Map<string, Row>> {
  const { rows } = await b.db.client.query<Row>(
    `SELECT id::text AS id, "user" AS user, "current_date" AS current_date, "session_user"::text AS payload,
            "current_user" AS current_user, "__proto__" AS proto
       FROM public.outbox`,
  );
  return new Map(rows.map((r) => [r.id, r]));
}

async function insert(
  b: Bundle,
  r: { user: string; date?: string | null; payload?: string; headers?: string; currentUser?: string; at: string },
): Promise<string> {
  const id = randomUUID();
  await b.db.client.query(
    `INSERT INTO public.outbox (id, aggregatetype, "user", "current_date", "session_user", headers, "current_user", "__proto__", created_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    [
      id,
      b.types[0],
      r.user,
      r.date ?? null,
      r.payload ?? '{"who": "alice", "n": 1.10}',
      r.headers ?? null,
      r.currentUser ?? null,
      `p-${r.user}`,
      r.at,
    ],
  );
  return id;
}

const isLetter = (d: Delivered): boolean => d.stream.startsWith('dlq_');

/** A message carries its row's values byte for byte: key, type, payload. */
function expectRowValues(d: Delivered, row: Row | undefined): void {
  expect(row, d.id).toBeDefined();
  if (!row) return;
  expect(d.key).toBe(row.user);
  expect(d.headers.type).toBe(row.current_date ?? undefined);
  expect(Buffer.compare(d.value, Buffer.from(row.payload)), `payload of ${d.id}: ${d.value}`).toBe(0);
}

/** A dead letter carries its row whole, each column under its own name with its own value. */
function expectWholeRow(d: Delivered, row: Row | undefined): void {
  expect(row, d.id).toBeDefined();
  if (!row) return;
  const whole = JSON.parse(d.value.toString()) as Record<string, string | null>;
  expect(whole.user).toBe(row.user);
  expect(whole.current_date).toBe(row.current_date);
  expect(whole.current_user).toBe(row.current_user);
  expect(Object.getOwnPropertyDescriptor(whole, '__proto__')?.value).toBe(row.proto);
}

describe('identifiers that are SQL key words', () => {
  it('columns named user, current_date, session_user, current_user: the live relay and a replay publish the table’s values', async () => {
    await using b = await bundle({
      kind: 'kafka',
      onPoison: 'dead-letter',
      ddl: [KEYWORD_TABLE],
      columns: { aggregateid: 'user', type: 'current_date', payload: 'session_user' },
    });
    const relay = b.start();
    await relay.ready();
    const good = [
      await insert(b, { user: 'u-1', date: '2020-02-29', currentUser: 'carol', at: '2021-06-01 12:00:00+00' }),
      await insert(b, { user: 'u-2', payload: '{"b": [1, 2.50], "a": "ü"}', at: '2021-06-01 12:00:01+00' }),
    ];
    const skipped = await insert(b, { user: 'skip', date: '1999-12-31', at: '2021-06-01 12:00:02+00' });
    const poison = await insert(b, {
      user: 'bad',
      date: '2001-01-01',
      headers: '[1, 2]',
      currentUser: 'dave',
      at: '2021-06-01 12:00:03+00',
    });
    const old = await insert(b, { user: 'old', at: '2019-01-01 00:00:00+00' });
    await waitDelivered(b.reader, [...good, skipped, poison, old], 60_000);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);

    const rows = await tableRows(b);
    const live = b.reader.delivered().filter((d) => d.headers[REPLAY] === undefined);
    for (const d of live.filter((d) => !isLetter(d))) expectRowValues(d, rows.get(d.id));
    const liveLetters = live.filter(isLetter);
    expect(liveLetters.map((d) => d.id)).toEqual([poison]);
    expectWholeRow(liveLetters[0] as Delivered, rows.get(poison));

    // --from/--to compare with created_at; --where reads aggregateid, which is the column "user".
    const r = await CliProcess.run([
      'replay',
      '-c',
      b.configFile,
      '--from',
      '2021-01-01 00:00:00+00',
      '--to',
      '2022-01-01 00:00:00+00',
      '--where',
      "aggregateid <> 'skip'",
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/: 3 rows read, 2 published, 1 poison \(1 dead-lettered\), 0 skipped/);
    const runId = /outboxd replay ([0-9a-f-]{36}):/.exec(r.stderr)?.[1] as string;
    const replayed = () => b.reader.delivered().filter((d) => d.headers[REPLAY] === runId);
    await until('the replayed messages and dead letter', async () => replayed().length >= 3, 30_000, 100);
    // Read every topic, the dead-letter one included, to its end: a second letter (there must be
    // none) would be there by now.
    await b.reader.caughtUp();
    const main = replayed().filter((d) => !isLetter(d));
    expect(main.map((d) => d.id).sort()).toEqual([...good].sort());
    for (const d of main) expectRowValues(d, rows.get(d.id));
    const letters = replayed().filter(isLetter);
    expect(letters.map((d) => d.id)).toEqual([poison]);
    expectWholeRow(letters[0] as Delivered, rows.get(poison));
  });

  it('schema "Order", table "user", publication "order", created_at column "current_date": setup, relay, prune and replay work', async () => {
    await using b = await bundle({
      kind: 'kafka',
      ddl: ['CREATE SCHEMA "Order"'],
      tables: ['Order.user'],
      columns: { created_at: 'current_date' },
      postgresExtra: '  publication: order\n',
      outboxExtra: '  prune:\n    mode: delete\n    retain: 1h\n    interval: 300ms\n    batchSize: 100\n    pause: 0\n',
    });
    // The table as `setup --print` writes it, then `setup` for the publication and the slot.
    const printed = await CliProcess.run(['setup', '-c', b.configFile, '--print']);
    expect(printed.code, printed.stderr).toBe(0);
    expect(printed.stdout).toContain('CREATE TABLE IF NOT EXISTS "Order"."user"');
    await b.db.client.query(printed.stdout.split('-- publication and slot:')[0] as string);
    const setup = await CliProcess.run(['setup', '-c', b.configFile]);
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toContain('-- publication order: created');

    const relay = b.start();
    await relay.ready();
    const insertAged = async (n: number, age: string): Promise<string[]> => {
      const ids = Array.from({ length: n }, () => randomUUID());
      await b.db.client.query(
        `INSERT INTO "Order"."user" (id, aggregatetype, aggregateid, type, payload, "current_date")
         SELECT id, $2, 'k', 'Aged', '{}', now() - $3::interval FROM unnest($1::uuid[]) AS t(id)`,
        [ids, b.types[0], age],
      );
      return ids;
    };
    const old = await insertAged(20, '2 hours');
    const young = await insertAged(5, '10 minutes');
    await waitDelivered(b.reader, [...old, ...young], 60_000);
    const present = async (ids: string[]) =>
      Number((await b.db.client.query('SELECT count(*) AS n FROM "Order"."user" WHERE id = ANY($1::uuid[])', [ids])).rows[0]?.n);
    await until('old rows pruned', async () => (await present(old)) === 0, 30_000, 100);
    expect(await present(young)).toBe(5);
    expect(await relay.metric('outboxd_pruned_rows_total', { table: 'Order.user' })).toBe(20);
    // The lost-slot marker is written on publication "order".
    const { rows } = await b.db.client.query<{ c: string }>(
      `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'order'`,
    );
    expect(rows[0]?.c).toMatch(/^outboxd:.*"epochs":\{"[^"]+":\{"xid":"\d+"/);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);

    // The window compares with the column "current_date", not today's date.
    const r = await CliProcess.run(['replay', '-c', b.configFile, '--from', new Date(Date.now() - 3_600_000).toISOString(), '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/: 5 rows read, 5 would be published/);
    expect(r.stdout).toContain(`Order.user\toutbox.event.${b.types[0]}\t5`);
  });
});
