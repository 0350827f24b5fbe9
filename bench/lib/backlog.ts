import type pg from 'pg';
import { note } from './log.js';
import { type Lsn, currentLsn, dropSlot, parseLsn } from './pg.js';

/**
 * A backlog: its own outbox table (the Debezium-style DDL of test/integration/support.ts), its
 * own insert-only publication, and a template slot created BEFORE the rows are written. Every
 * consumer drains a fresh copy of the template (pg_copy_logical_replication_slot), so all of them
 * read the identical WAL range [startLsn, endLsn).
 *
 * Backlogs are written one after another and never while a consumer runs, so a backlog's WAL
 * range holds nothing but its own rows.
 */
export interface BacklogSpec {
  name: string;
  rows: number;
  rowsPerTxn: number;
  payloadBytes: number;
  keys: number;
}

export interface Backlog extends BacklogSpec {
  table: string;
  publication: string;
  template: string;
  startLsn: Lsn;
  endLsn: Lsn;
  /** WAL position after each chunk of rows was written (the last one is endLsn). */
  checkpoints: Array<{ rows: number; lsn: Lsn }>;
  walBytes: number;
  payloadTotalBytes: number;
  avgPayloadBytes: number;
  writeSeconds: number;
}

/** Random hex the payloads take their padding from (64 KiB, so pads of 10 KiB still vary). */
export async function preparePool(db: pg.Client): Promise<void> {
  await db.query('CREATE TABLE IF NOT EXISTS bench_pool (pool text NOT NULL)');
  await db.query('TRUNCATE bench_pool');
  await db.query(`INSERT INTO bench_pool SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, 2048) g`);
}

function payloadExpr(payloadBytes: number, pad: string): string {
  // Small payloads: three fields; larger: a plausible order event. `note` carries the padding.
  return payloadBytes < 200
    ? `jsonb_build_object('seq', g, 'orderId', 'key-' || (g % keys), 'note', ${pad})`
    : `jsonb_build_object('seq', g, 'orderId', 'key-' || (g % keys), 'customer', 'cust-' || (g % 997), 'amount', round((g % 100000) / 100.0, 2), 'currency', 'EUR', 'status', (ARRAY['created','paid','shipped'])[1 + g % 3], 'note', ${pad})`;
}

/** An outbox table (the Debezium-style DDL of test/integration/support.ts) and its insert-only publication. */
export async function createOutboxTable(db: pg.Client, table: string, publication: string): Promise<void> {
  await db.query(`DROP PUBLICATION IF EXISTS ${publication}`);
  await db.query(`DROP TABLE IF EXISTS ${table}`);
  await db.query(`CREATE TABLE ${table} (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text,
    payload jsonb NOT NULL,
    headers jsonb,
    correlation_id text,
    causation_id text,
    reply_to text,
    traceparent text,
    created_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false)`);
  // The publication must predate the slot: pgoutput looks it up as of the WAL it decodes.
  await db.query(`CREATE PUBLICATION ${publication} FOR TABLE ${table} WITH (publish = 'insert')`);
}

/**
 * `beforeSlots`: runs once the table and its publication exist, before the template slot is
 * created and any row is written: slots (and publications) it makes see the whole backlog.
 */
export async function createBacklog(
  db: pg.Client,
  spec: BacklogSpec,
  opts: { beforeSlots?: (table: string) => Promise<void> } = {},
): Promise<Backlog> {
  const table = `outbox_${spec.name}`;
  const publication = `pub_${spec.name}`;
  const template = `tpl_${spec.name}`;
  await dropSlot(db, template);
  await createOutboxTable(db, table, publication);

  // Padding so that the JSON text comes out at about payloadBytes.
  const probe = await db.query<{ n: number }>(
    `SELECT length((${payloadExpr(spec.payloadBytes, "''")})::text) AS n FROM (SELECT ${Math.floor(spec.rows / 2)} AS g, ${spec.keys} AS keys) s`,
  );
  const pad = Math.max(0, spec.payloadBytes - (probe.rows[0]?.n ?? 0));
  // 4096 distinct pads of that length, cut from the random pool once (substr on a long UTF-8
  // text walks it from the start, too slow per row); rows look them up by g % 4096.
  const pads = `bench_pads_${spec.name}`;
  await db.query(`DROP TABLE IF EXISTS ${pads}`);
  await db.query(`CREATE TABLE ${pads} (i int PRIMARY KEY, pad text NOT NULL)`);
  await db.query(
    `INSERT INTO ${pads} SELECT i, substr(pool, 1 + (i * 7919) % greatest(1, length(pool) - $1), $1) FROM bench_pool, generate_series(0, 4095) i`,
    [pad],
  );
  await db.query(`ANALYZE ${pads}`);
  const proc = `bench_fill_${spec.name}`;
  // Static SQL inside the loop (a cached plan); one COMMIT per transaction of the backlog.
  await db.query(`CREATE OR REPLACE PROCEDURE ${proc}(first int, total int, per_txn int, keys int)
    LANGUAGE plpgsql AS $$
    DECLARE
      pos int := first;
    BEGIN
      WHILE pos < total LOOP
        INSERT INTO ${table} (aggregatetype, aggregateid, type, payload)
        SELECT 'order', 'key-' || (g % keys), (ARRAY['created','paid','shipped'])[1 + g % 3],
               ${payloadExpr(spec.payloadBytes, `(SELECT pad FROM ${pads} WHERE i = g % 4096)`)}
          FROM generate_series(pos, least(pos + per_txn, total) - 1) AS g;
        pos := pos + per_txn;
        COMMIT;
      END LOOP;
    END $$`);

  await opts.beforeSlots?.(table);
  const created = await db.query<{ lsn: string }>(`SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, [template]);
  const startLsn = parseLsn(created.rows[0]?.lsn ?? '0/0');
  const t0 = performance.now();
  // Written in chunks, with the WAL position after each, so a consumer can be timed on a prefix.
  const chunk = Math.max(spec.rowsPerTxn, Math.ceil(spec.rows / 20 / spec.rowsPerTxn) * spec.rowsPerTxn);
  const checkpoints: Array<{ rows: number; lsn: Lsn }> = [];
  for (let first = 0; first < spec.rows; first += chunk) {
    const upto = Math.min(spec.rows, first + chunk);
    // Integer literals, not parameters: a procedure may only COMMIT when CALLed by a simple query.
    await db.query(`CALL ${proc}(${first}, ${upto}, ${spec.rowsPerTxn}, ${spec.keys})`);
    checkpoints.push({ rows: upto, lsn: await currentLsn(db) });
  }
  const writeSeconds = (performance.now() - t0) / 1000;
  const endLsn = checkpoints[checkpoints.length - 1]?.lsn ?? (await currentLsn(db));
  const stats = await db.query<{ n: string; bytes: string }>(
    `SELECT count(*)::text AS n, sum(octet_length(payload::text))::text AS bytes FROM ${table}`,
  );
  const n = Number(stats.rows[0]?.n ?? 0);
  if (n !== spec.rows) throw new Error(`backlog ${spec.name}: wrote ${n} rows, wanted ${spec.rows}`);
  const payloadTotalBytes = Number(stats.rows[0]?.bytes ?? 0);
  const b: Backlog = {
    ...spec,
    table,
    publication,
    template,
    startLsn,
    endLsn,
    checkpoints,
    walBytes: Number(endLsn - startLsn),
    payloadTotalBytes,
    avgPayloadBytes: payloadTotalBytes / spec.rows,
    writeSeconds,
  };
  note(
    `backlog ${spec.name}: ${spec.rows} rows, ${spec.rowsPerTxn}/txn, ${b.avgPayloadBytes.toFixed(0)} B payloads, ` +
      `${(b.walBytes / 2 ** 20).toFixed(0)} MiB WAL, written in ${writeSeconds.toFixed(1)} s`,
  );
  return b;
}

/** The first `rows` rows of the backlog, rounded up to a written chunk, and where they end in the WAL. */
export function prefixOf(b: Backlog, rows: number): { rows: number; lsn: Lsn } {
  for (const c of b.checkpoints) if (c.rows >= rows) return c;
  return { rows: b.rows, lsn: b.endLsn };
}

/** Drops the template slot (the WAL it pins) and the table. */
export async function dropBacklog(db: pg.Client, b: Backlog): Promise<void> {
  await dropSlot(db, b.template);
  await db.query(`DROP PUBLICATION IF EXISTS ${b.publication}`);
  await db.query(`DROP TABLE IF EXISTS ${b.table}`);
  await db.query(`DROP PROCEDURE IF EXISTS bench_fill_${b.name}`);
  await db.query(`DROP TABLE IF EXISTS bench_pads_${b.name}`);
}
