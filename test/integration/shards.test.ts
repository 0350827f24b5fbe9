import { randomUUID } from 'node:crypto';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { setupCommand, setupSql } from '../../src/commands/setup.js';
import { runChecks } from '../../src/commands/validate.js';
import { type Config, shardConfig } from '../../src/config/config.js';
import { parseConfig } from '../../src/config/load.js';
import { ensurePublication } from '../../src/postgres/publication.js';
import { hashtext, keyShard } from '../../src/postgres/shard.js';
import { connectAdmin } from '../../src/source/connect.js';
import type { PgMajor } from '../harness/postgres.js';
import { pgUrl } from '../harness/services.js';
import { TestDb, writeOutbox } from './support.js';

/**
 * Shards against real PostgreSQL (ADR 0020): outboxd's hashtext equals the server's on thousands
 * of keys, on every version that has row filters; `setup` creates every shard's publication and
 * slot, and each slot is sent exactly the rows of its shard; a wrong filter anywhere is refused by
 * `run` and `validate --connect`; PostgreSQL 14, and a key column a row filter cannot hash, are
 * config errors. The relays themselves run in test/faults/shards.test.ts.
 */

const config = (db: TestDb, index: number, count: number, extra = ''): Config =>
  parseConfig(
    `postgres:\n  url: ${db.url}\n  slot: ${db.slot}\n  shard:\n    index: ${index}\n    count: ${count}\n${extra}sink:\n  type: stdout\n`,
    {},
  );

/** Keys of every length from 0 to 80 bytes and beyond, ASCII and multi-byte. */
function keys(n: number): string[] {
  const alphabet = ['a', 'Z', '7', '-', ' ', 'é', 'ß', '中', '😀', '\u0001'];
  const out: string[] = ['', 'a', 'order-1', randomUUID()];
  for (let i = 0; out.length < n; i++) {
    let k = '';
    const len = i % 83;
    for (let j = 0; j < len; j++) k += alphabet[(i * 7 + j * 13 + (i >> 3)) % alphabet.length];
    out.push(k, `${randomUUID()}:${i}`);
  }
  return out;
}

async function sink(fn: (out: NodeJS.WritableStream) => Promise<number>): Promise<{ code: number; text: string }> {
  const out = new PassThrough();
  let text = '';
  out.on('data', (d: Buffer) => {
    text += d.toString();
  });
  const code = await fn(out);
  return { code, text };
}

/** The inserts a slot would send now (pgoutput 'I' messages), without consuming them. */
async function insertsIn(db: TestDb, slot: string, publication: string): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)
      WHERE get_byte(data, 0) = 73`,
    [slot, publication],
  );
  return Number(rows[0]?.n);
}

describe.each([15, 16, 17, 18] as PgMajor[])('shards on PostgreSQL %i', (major) => {
  it("outboxd's hashtext is the server's, key for key", async () => {
    await using db = await new TestDb(await pgUrl(major)).create();
    const all = keys(3_000);
    const { rows } = await db.client.query<{ h: number }>(
      `SELECT hashtext(k COLLATE "C") AS h FROM unnest($1::text[]) WITH ORDINALITY AS u(k, i) ORDER BY i`,
      [all],
    );
    const mismatched = all.filter((k, i) => hashtext(Buffer.from(k, 'utf8')) !== rows[i]?.h);
    expect(mismatched).toEqual([]);
  });

  it('setup creates every shard; each slot is sent exactly the rows whose key hashes to it', async () => {
    await using db = await new TestDb(await pgUrl(major)).create();
    const cfg = config(db, 1, 3);
    const { code, text } = await sink((out) => setupCommand(cfg, false, out));
    expect(code, text).toBe(0);
    for (let i = 0; i < 3; i++) expect(text).toContain(`replication slot ${db.slot}_${i}_of_3: created`);
    const rows = await writeOutbox(db.client, { total: 600, keys: 97, types: ['order'] });
    const want = [0, 0, 0];
    for (const r of rows) want[keyShard(r.aggregateid, 3)]! += 1;
    const got: number[] = [];
    for (let i = 0; i < 3; i++) got.push(await insertsIn(db, `${db.slot}_${i}_of_3`, `outboxd_${i}_of_3`));
    expect(got).toEqual(want);
    expect(got.reduce((a, b) => a + b)).toBe(600);
    // setup again: everything exists, nothing is altered.
    expect((await sink((out) => setupCommand(cfg, false, out))).text).toContain(`replication slot ${db.slot}_2_of_3: exists`);
    // --print shows what it runs, for every shard.
    expect(setupSql(cfg).match(/CREATE PUBLICATION/g)).toHaveLength(3);
  });
});

describe('a shard filter that is not the one the config implies', () => {
  it('is refused by run (at the publication check) and by every shard’s validate --connect, naming the fix', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    const cfg = config(db, 0, 2);
    expect((await sink((out) => setupCommand(cfg, false, out))).code).toBe(0);
    // Shard 1's publication made to send shard 0's keys: shard 1's keys would be lost.
    await db.client.query(
      `ALTER PUBLICATION outboxd_1_of_2 SET TABLE public.outbox WHERE (((hashtext(aggregateid COLLATE "C") & 2147483647) % 2) = 0)`,
    );
    const checks = await runChecks(cfg);
    const shards = checks.find((c) => c.name === 'shards');
    expect(shards?.status).toBe('fail');
    expect(shards?.detail).toMatch(
      /publication outboxd_1_of_2 is shard 1 of 2 but its filter on table public\.outbox is WHERE .*% 2\) = 0.*ALTER PUBLICATION/,
    );
    const client = await connectAdmin(shardConfig(cfg, 1).postgres);
    try {
      await expect(ensurePublication(client, shardConfig(cfg, 1))).rejects.toThrow(
        /is shard 1 of 2 but its filter.*run: ALTER PUBLICATION/,
      );
      // The same count's shard 0 is fine; a publication without any filter is refused too.
      await expect(ensurePublication(client, cfg)).resolves.toBe('exists');
      await db.client.query('ALTER PUBLICATION outboxd_0_of_2 SET TABLE public.outbox');
      await expect(ensurePublication(client, cfg)).rejects.toThrow(/filter on table public\.outbox is missing \(it sends every row\)/);
    } finally {
      await client.end();
    }
  });
});

describe('a shard config the server cannot carry', () => {
  it('PostgreSQL 14 has no row filters: setup and validate name it', async () => {
    await using db = await new TestDb(await pgUrl(14)).create();
    const cfg = config(db, 0, 2);
    const { code, text } = await sink((out) => setupCommand(cfg, false, out));
    expect(code).toBe(3);
    expect(text).toMatch(/postgres\.shard: PostgreSQL 14 has no publication row filters.*use PostgreSQL 15 or newer/);
    expect((await runChecks(cfg)).find((c) => c.name === 'shards')).toMatchObject({ status: 'fail' });
  });

  it('a uuid key column cannot be hashed in a row filter: named, nothing created', async () => {
    await using db = await new TestDb(await pgUrl(15)).create([
      'CREATE TABLE public.outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid uuid, type text, payload jsonb, created_at timestamptz DEFAULT now())',
    ]);
    const { code, text } = await sink((out) => setupCommand(config(db, 0, 2), false, out));
    expect(code).toBe(3);
    expect(text).toMatch(/outbox\.tables\[0\]\.columns\.aggregateid: column aggregateid of table public\.outbox is uuid/);
    const { rows } = await db.client.query("SELECT 1 FROM pg_publication WHERE pubname LIKE 'outboxd%'");
    expect(rows).toHaveLength(0);
  });
});
