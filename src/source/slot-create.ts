import type pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import { ConfigError, PgConnectionError } from '../errors.js';
import { serverVersion } from '../postgres/sql.js';
import { connectAdmin, connectSameHost, hostOf } from './connect.js';
import { classifyPgError, wasCanceled } from '../postgres/pg-errors.js';

/**
 * Creating a replication slot: as a failover slot when asked, bounded by
 * `postgres.slotCreateTimeout`, reporting the transactions it waits for, and (for lost-slot
 * recovery) exporting the snapshot of its consistent point.
 */

/** postgres.failover needs failover slots: PostgreSQL 17 or later. */
export async function requireFailoverSlots(client: pg.Client): Promise<void> {
  const v = await serverVersion(client);
  if (v >= 170000) return;
  throw new ConfigError(
    'postgres.failover',
    `needs PostgreSQL 17 or later (failover slots); ${hostOf(client)} runs ${Math.floor(v / 10000)}.${v % 10000}: set postgres.failover: false`,
  );
}

/**
 * Makes an existing slot a failover slot. There is no SQL function for it: the replication
 * protocol's ALTER_REPLICATION_SLOT, on a replication connection to the admin connection's host.
 * The slot must be inactive, which it is while we lead and before we stream.
 */
export async function enableFailover(client: pg.Client, cfg: PostgresConfig): Promise<void> {
  const repl = await replicationConnection(client, cfg);
  try {
    await repl.query(`ALTER_REPLICATION_SLOT "${cfg.slot}" ( FAILOVER true )`);
  } catch (err) {
    const e = classifyPgError(err, `enabling failover on replication slot ${cfg.slot}`);
    if (e.retriable) throw e;
    throw new ConfigError('postgres.failover', `${e.message}; set postgres.failover: false, or recreate the slot as a failover slot`);
  } finally {
    await repl.end().catch(() => undefined);
  }
}

/** A transaction that slot creation waits for. */
export interface Blocker {
  pid: number;
  ageSeconds: number;
  state: string;
  application: string;
}

export type OnWait = (blockers: Blocker[], waitedMs: number) => void;

/**
 * Creates the slot with SQL on the admin connection (a first start: nothing needs its snapshot).
 * Rejects with the driver's error (42710 when it exists), or a PgConnectionError when it waited
 * longer than postgres.slotCreateTimeout.
 */
export async function createSlot(client: pg.Client, cfg: PostgresConfig, onWait: OnWait): Promise<void> {
  const ownPid = (client as unknown as { processID?: number }).processID ?? 0;
  await watched(cfg, ownPid, onWait, async () => {
    await client.query(`SELECT set_config('statement_timeout', $1, false)`, [String(cfg.slotCreateTimeoutMs)]);
    try {
      // PostgreSQL 17: (slot_name, plugin, temporary, twophase, failover).
      if (cfg.failover) await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)`, [cfg.slot]);
      else await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [cfg.slot]);
    } catch (err) {
      if (wasCanceled(err)) throw timedOut(cfg, err);
      throw err;
    } finally {
      await client.query(`SELECT set_config('statement_timeout', $1, false)`, [String(cfg.statementTimeoutMs)]).catch(() => undefined);
    }
  });
}

/**
 * The snapshot a new slot exported at its consistent point (docs/adr/0012). Every transaction
 * whose commit lies before that point is visible in it, and the slot streams every one after it:
 * nothing falls between. A snapshot taken any later is not the same: a transaction that wrote its
 * commit record before the point but is still in the proc array (a synchronous-replication wait)
 * is invisible to it, and the slot does not stream it either.
 *
 * `id` is valid for SET TRANSACTION SNAPSHOT until `release()` ends the replication connection
 * that holds it; a transaction that imported it keeps it.
 */
export interface ExportedSnapshot {
  readonly id: string;
  release(): Promise<void>;
}

/**
 * Creates the slot on a replication connection with CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT,
 * and keeps that connection (and so the snapshot) until the caller releases it. Bounded by
 * postgres.slotCreateTimeout: past it the creating session is terminated (its half-made slot goes
 * with it) and a PgConnectionError says so.
 */
export async function createSlotExporting(client: pg.Client, cfg: PostgresConfig, onWait: OnWait): Promise<ExportedSnapshot> {
  const repl = await replicationConnection(client, cfg);
  const pid = (repl as unknown as { processID?: number }).processID ?? 0;
  const version = await serverVersion(client);
  // PostgreSQL 15 took a parenthesised option list (and 17 FAILOVER in it); 14 knows only the keyword.
  const options = version >= 150000 ? `(SNAPSHOT 'export'${cfg.failover ? ', FAILOVER true' : ''})` : 'EXPORT_SNAPSHOT';
  let timedOutAt = false;
  const timer = setTimeout(() => {
    timedOutAt = true;
    void client.query('SELECT pg_terminate_backend($1)', [pid]).catch(() => undefined);
  }, cfg.slotCreateTimeoutMs);
  try {
    const { rows } = await watched(cfg, pid, onWait, () =>
      repl.query<{ snapshot_name: string | null }>(`CREATE_REPLICATION_SLOT "${cfg.slot}" LOGICAL pgoutput ${options}`),
    );
    const id = rows[0]?.snapshot_name;
    if (!id) throw new PgConnectionError(`creating replication slot ${cfg.slot}: the server exported no snapshot`);
    let released: Promise<void> | null = null;
    return { id, release: () => (released ??= repl.end().catch(() => undefined)) };
  } catch (err) {
    await repl.end().catch(() => undefined);
    if (timedOutAt) throw timedOut(cfg, err);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

function replicationConnection(client: pg.Client, cfg: PostgresConfig): Promise<pg.Client> {
  return connectSameHost(cfg, client, { replication: 'database' } as Partial<pg.ClientConfig>);
}

function timedOut(cfg: PostgresConfig, cause: unknown): PgConnectionError {
  return new PgConnectionError(
    `creating replication slot ${cfg.slot}: still waiting for running transactions to end after ${Math.round(cfg.slotCreateTimeoutMs / 1000)} s (postgres.slotCreateTimeout); retrying`,
    cause,
  );
}

/** First report of what slot creation waits for, then every BLOCKER_REPORT_MS. */
const BLOCKER_FIRST_MS = 2_000;
const BLOCKER_REPORT_MS = 10_000;

/**
 * Runs `create`. Postgres waits for every transaction running at that moment to end before it can
 * hand out a consistent point, so this may wait; while it does, `onWait` hears which transactions
 * it waits for (pg_stat_activity, on a connection of its own, leaving out the creating session
 * `ownPid`) after 2 s and then every 10 s.
 */
async function watched<T>(cfg: PostgresConfig, ownPid: number, onWait: OnWait, create: () => Promise<T>): Promise<T> {
  const started = Date.now();
  let watcher: pg.Client | null = null;
  let timer: NodeJS.Timeout | undefined;
  let done = false;
  let reporting: Promise<void> = Promise.resolve();
  const report = async () => {
    try {
      watcher ??= await connectAdmin(cfg);
      const w = watcher;
      if (done) return;
      const { rows } = await w.query<{ pid: number; age: number; state: string | null; app: string | null }>(
        `SELECT pid, floor(extract(epoch FROM now() - xact_start))::int AS age, state, application_name AS app
           FROM pg_stat_activity
          WHERE pid <> $1 AND backend_xid IS NOT NULL
          ORDER BY xact_start LIMIT 5`,
        [ownPid],
      );
      if (!done)
        onWait(
          rows.map((r) => ({ pid: r.pid, ageSeconds: r.age, state: r.state ?? '', application: r.app ?? '' })),
          Date.now() - started,
        );
    } catch {
      // Only a report; the creation itself decides.
    }
    if (!done) timer = setTimeout(() => (reporting = report()), BLOCKER_REPORT_MS);
  };
  timer = setTimeout(() => (reporting = report()), BLOCKER_FIRST_MS);
  try {
    return await create();
  } finally {
    done = true;
    clearTimeout(timer);
    await reporting;
    await (watcher as pg.Client | null)?.end().catch(() => undefined);
  }
}
