import { randomUUID } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { makePki } from '../harness/certs.js';
import { startPostgres } from '../harness/postgres.js';
import { OUTBOX_DDL, until, writeOutbox } from '../integration/support.js';
import { type Bundle, type SinkKind, bundle, waitDelivered } from './fixtures.js';

/**
 * A huge value costs the relay nothing but the time to read past it (docs/adr/0015): under rows
 * and logical messages of 128 MiB, with outboxd's default pipeline bounds, its peak RSS stays under
 * pipeline.maxInFlightBytes plus the allowance docs/config.md states, and the rows around them flow.
 */

const MiB = 1024 * 1024;
const HUGE = 128 * MiB;
/** outboxd's default pipeline.maxInFlightBytes. */
const MAX_IN_FLIGHT_BYTES = 64 * MiB;
/** What docs/config.md (pipeline.maxInFlightBytes) says the relay may hold beyond it. */
const RSS_ALLOWANCE_BYTES = 192 * MiB;

const DDL = [
  OUTBOX_DDL,
  'CREATE TABLE public.outbox_text (LIKE public.outbox INCLUDING DEFAULTS)',
  'ALTER TABLE public.outbox_text ALTER COLUMN payload TYPE text',
  // A column outboxd does not map: a huge value there is skipped, and the row flows.
  'CREATE TABLE public.outbox_extra (LIKE public.outbox INCLUDING DEFAULTS)',
  'ALTER TABLE public.outbox_extra ADD COLUMN attachment text',
];
const TABLES = ['public.outbox', 'public.outbox_text', 'public.outbox_extra'];

/** Peak resident set size of a process (VmHWM), in bytes. */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/**
 * Writes good rows with, between them, a 128 MiB jsonb payload, a 128 MiB text payload, a
 * 128 MiB logical message and a 128 MiB unmapped column (each value built by Postgres, so the
 * test process holds none of it). Checks that the good rows and the unmapped one arrive, that the
 * three others are dead-lettered as `oversized` (the rows with their id), and the relay's peak RSS.
 */
async function hugeValuesBetweenGoodRows(b: Bundle, label: string): Promise<void> {
  const relay = b.start();
  await relay.ready();
  const atReady = peakRss(relay.child.pid as number);
  const q = (sql: string, params: unknown[]) => b.db.client.query(sql, params);
  const insert = (table: string, id: string, payload: string, extra = '') =>
    q(
      `INSERT INTO ${table} (id, aggregatetype, aggregateid, type, payload${extra ? ', attachment' : ''})
         VALUES ($1, $2, 'k', 'T', ${payload}${extra ? `, ${extra}` : ''})`,
      [id, b.types[0], HUGE],
    );
  const good: string[] = [];
  const goodRow = async () => {
    const id = randomUUID();
    await insert('public.outbox', id, `jsonb_build_object('size', $3::int)`);
    good.push(id);
  };
  await goodRow();
  const jsonbRow = randomUUID();
  await insert('public.outbox', jsonbRow, `jsonb_build_object('blob', repeat('x', $3::int))`);
  await goodRow();
  const textRow = randomUUID();
  await insert('public.outbox_text', textRow, `repeat('y', $3::int)`);
  await goodRow();
  await q(`SELECT pg_logical_emit_message(true, 'outbox', repeat('z', $1::int))`, [HUGE]);
  await goodRow();
  const unmapped = randomUUID();
  await insert('public.outbox_extra', unmapped, `jsonb_build_object('size', $3::int)`, `repeat('w', $3::int)`);
  await goodRow();

  await waitDelivered(b.reader, [...good, unmapped, jsonbRow, textRow], 300_000);
  const letters = () => b.reader.delivered().filter((d) => d.headers['outboxd.error_reason'] !== undefined);
  await until('3 dead letters', async () => letters().length >= 3, 60_000);
  const reasons = letters().map((d) => `${d.headers.id ?? 'message'}: ${d.headers['outboxd.error_reason']}`);
  expect(reasons.sort()).toEqual([`${jsonbRow}: oversized`, `${textRow}: oversized`, 'message: oversized'].sort());
  const main = b.reader.delivered().filter((d) => d.headers['outboxd.error_reason'] === undefined);
  expect(main.map((d) => d.id)).toEqual([...good.slice(0, 4), unmapped, good[4]]);
  expect(JSON.parse(main[4]?.value.toString() ?? '')).toEqual({ size: HUGE });
  expect((await relay.http('/readyz')).status).toBe(200);

  const peak = peakRss(relay.child.pid as number);
  console.log(
    `[memory] ${label}: four 128 MiB values, relay peak RSS ${(peak / MiB).toFixed(0)} MiB (${(atReady / MiB).toFixed(0)} MiB when ready)`,
  );
  expect(peak).toBeLessThan(MAX_IN_FLIGHT_BYTES + RSS_ALLOWANCE_BYTES);
}

describe('huge values', () => {
  for (const kind of ['kafka', 'rabbitmq'] satisfies SinkKind[]) {
    it(`${kind}: are dead-lettered as oversized without being held; the relay stays under maxInFlightBytes + ${RSS_ALLOWANCE_BYTES / MiB} MiB`, async () => {
      await using b = await bundle({ kind, ddl: DDL, tables: TABLES, onPoison: 'dead-letter', pipeline: '' });
      await hugeValuesBetweenGoodRows(b, kind);
    }, 600_000);
  }

  it('over TLS (sslmode=require): the replication connection is encrypted, and still holds no huge value', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outboxd-pg-tls-'));
    try {
      const pki = makePki(dir, { clientCn: 'outboxd' });
      await using server = await startPostgres(15, { tls: { certFile: pki.serverCertFile, keyFile: pki.serverKeyFile } });
      // pg reads sslmode=require as verify-full (docs/config.md): the CA makes the check pass.
      const url = `${server.url}?sslmode=require&sslrootcert=${encodeURIComponent(pki.caFile)}`;
      await using b = await bundle({ kind: 'kafka', pgUrl: url, ddl: DDL, tables: TABLES, onPoison: 'dead-letter', pipeline: '' });
      await hugeValuesBetweenGoodRows(b, 'kafka over TLS');
      const { rows } = await b.db.client.query<{ ssl: boolean }>(
        `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'outboxd'`,
      );
      expect(rows).toEqual([{ ssl: true }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);

  it('over TLS with sslnegotiation=direct (Postgres 17): no SSLRequest, TLS at once, rows flow', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'outboxd-pg-tls-'));
    try {
      const pki = makePki(dir, { clientCn: 'outboxd' });
      await using server = await startPostgres(17, { tls: { certFile: pki.serverCertFile, keyFile: pki.serverKeyFile } });
      const url = `${server.url}?sslmode=verify-full&sslnegotiation=direct&sslrootcert=${encodeURIComponent(pki.caFile)}`;
      await using b = await bundle({ kind: 'kafka', pgUrl: url });
      const relay = b.start();
      await relay.ready();
      const rows = await writeOutbox(b.db.client, { total: 200, keys: 10, types: b.types });
      await waitDelivered(
        b.reader,
        rows.map((r) => r.id),
      );
      const { rows: ssl } = await b.db.client.query<{ ssl: boolean }>(
        `SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'outboxd'`,
      );
      expect(ssl).toEqual([{ ssl: true }]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
