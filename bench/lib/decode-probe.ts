import type pg from 'pg';
import { type Lsn, connect, formatLsn } from './pg.js';
import { cpuSeconds } from './procfs.js';

/**
 * What one more slot costs the primary before it sends anything (issue 25): logical decoding of
 * a backlog's whole WAL range in a backend of its own, `pg_logical_slot_peek_binary_changes` on
 * the backlog's template slot (peeking consumes nothing), through pgoutput, with publications
 * that let no row through:
 * - `other`: a publication of another (empty) table: WAL read, reorder buffer, and pgoutput
 *   skipping each change of an unpublished table. The floor of any slot in the database.
 * - `filtered`: a publication of the backlog's table whose row filter is a shard filter's
 *   expression that keeps no row: the floor plus evaluating the filter on every row, which is
 *   what a shard's walsender pays for the rows of the other shards.
 * The backend's CPU comes from /proc (null when Postgres runs elsewhere). The same decoding runs
 * in a walsender, which also sends its own shard's rows.
 */
export interface DecodeProbe {
  other: { cpuSeconds: number | null; seconds: number; messages: number };
  filtered: { cpuSeconds: number | null; seconds: number; messages: number };
}

const names = (table: string) => ({
  other: `${table}_probe_other`,
  otherPub: `pub_${table}_probe_other`,
  filteredPub: `pub_${table}_probe_none`,
});

/** The probe's two publications; they must predate the slot it peeks. */
export async function createProbePublications(db: pg.Client, table: string): Promise<void> {
  const n = names(table);
  await dropProbePublications(db, table);
  await db.query(`CREATE TABLE ${n.other} (id int PRIMARY KEY)`);
  await db.query(`CREATE PUBLICATION ${n.otherPub} FOR TABLE ${n.other} WITH (publish = 'insert')`);
  // The shard filter's expression (src/postgres/shard.ts), with a remainder it never has.
  await db.query(
    `CREATE PUBLICATION ${n.filteredPub} FOR TABLE ${table} WHERE (((hashtext(aggregateid COLLATE "C") & 2147483647) % 1) = 1) WITH (publish = 'insert')`,
  );
}

export async function dropProbePublications(db: pg.Client, table: string): Promise<void> {
  const n = names(table);
  await db.query(`DROP PUBLICATION IF EXISTS ${n.otherPub}`);
  await db.query(`DROP PUBLICATION IF EXISTS ${n.filteredPub}`);
  await db.query(`DROP TABLE IF EXISTS ${n.other}`);
}

export async function probeDecode(dbUrl: string, table: string, slot: string, endLsn: Lsn): Promise<DecodeProbe> {
  const n = names(table);
  const client = await connect(dbUrl);
  try {
    const pid = (await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid ?? 0;
    const peek = async (publication: string) => {
      const cpu0 = cpuSeconds(pid);
      const t0 = performance.now();
      const { rows } = await client.query<{ n: string }>(
        `SELECT count(*) AS n FROM pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, NULL, 'proto_version', '1', 'publication_names', $3)`,
        [slot, formatLsn(endLsn), publication],
      );
      const seconds = (performance.now() - t0) / 1000;
      const cpu1 = cpuSeconds(pid);
      return { cpuSeconds: cpu0 !== null && cpu1 !== null ? cpu1 - cpu0 : null, seconds, messages: Number(rows[0]?.n ?? 0) };
    };
    return { other: await peek(n.otherPub), filtered: await peek(n.filteredPub) };
  } finally {
    await client.end().catch(() => undefined);
  }
}
