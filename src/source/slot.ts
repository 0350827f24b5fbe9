import pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import { ConfigError, PgConnectionError, SlotError } from '../errors.js';
import { type Lsn, parseLsn } from '../lsn.js';
import { connectAdmin, serverVersion } from './connect.js';
import { classifyPgError } from './pg-errors.js';

/**
 * The replication slot: what the server says of it, its creation (bounded, reporting what it
 * waits for), the marker that tells a first start from a lost slot, and its lag.
 */

export interface SlotInfo {
  name: string;
  plugin: string;
  database: string;
  active: boolean;
  activePid: number | null;
  confirmedFlushLsn: Lsn | null;
  restartLsn: Lsn | null;
  walStatus: string | null;
  invalidationReason: string | null;
}

export async function inspectSlot(client: pg.Client, slot: string): Promise<SlotInfo | null> {
  const { rows } = await client.query<{
    slot_name: string;
    plugin: string | null;
    database: string | null;
    active: boolean;
    active_pid: number | null;
    confirmed_flush_lsn: string | null;
    restart_lsn: string | null;
    wal_status: string | null;
    invalidation: string | null;
  }>(
    `SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
            ${(await serverVersion(client)) >= 170000 ? 'invalidation_reason' : 'NULL::text'} AS invalidation
       FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const r = rows[0];
  if (!r) return null;
  return {
    name: r.slot_name,
    plugin: r.plugin ?? '',
    database: r.database ?? '',
    active: r.active,
    activePid: r.active_pid,
    confirmedFlushLsn: r.confirmed_flush_lsn ? parseLsn(r.confirmed_flush_lsn) : null,
    restartLsn: r.restart_lsn ? parseLsn(r.restart_lsn) : null,
    walStatus: r.wal_status,
    invalidationReason: r.invalidation,
  };
}

/**
 * The marker that tells "first start" from "slot lost": a comment on the publication listing
 * the slots outboxd has created or adopted for it. A slot named there but missing from the
 * server was dropped or lost, and recreating it would silently skip every row in between.
 */
const MARKER_PREFIX = 'outboxd:';

/**
 * The marker's document. `confirmedXid`: a full transaction id (xid8, as text) such that every
 * outbox row from a transaction below it is confirmed by the broker (a passed pruning epoch,
 * outbox/prune.ts); lost-slot recovery publishes again the rows from transactions at or after it.
 */
export interface Marker {
  slots: string[];
  confirmedXid?: string;
  /** When confirmedXid was recorded (ISO time), for the operator. */
  confirmedAt?: string;
}

export async function readMarkerDoc(client: pg.Client, publication: string): Promise<Marker> {
  const { rows } = await client.query<{ c: string | null }>(
    `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = $1`,
    [publication],
  );
  const c = rows[0]?.c;
  if (!c?.startsWith(MARKER_PREFIX)) return { slots: [] };
  try {
    const doc = JSON.parse(c.slice(MARKER_PREFIX.length)) as { slots?: unknown; confirmedXid?: unknown; confirmedAt?: unknown };
    return {
      slots: Array.isArray(doc.slots) ? doc.slots.filter((s): s is string => typeof s === 'string') : [],
      ...(typeof doc.confirmedXid === 'string' && /^\d+$/.test(doc.confirmedXid) ? { confirmedXid: doc.confirmedXid } : {}),
      ...(typeof doc.confirmedAt === 'string' ? { confirmedAt: doc.confirmedAt } : {}),
    };
  } catch {
    return { slots: [] };
  }
}

export async function readMarker(client: pg.Client, publication: string): Promise<string[]> {
  return (await readMarkerDoc(client, publication)).slots;
}

/** Records a passed pruning epoch in the marker (keeping its slots), before anything is pruned by it. */
export async function recordConfirmedXid(client: pg.Client, publication: string, xid: bigint): Promise<void> {
  const doc = await readMarkerDoc(client, publication);
  await writeMarkerDoc(client, publication, { ...doc, confirmedXid: xid.toString(), confirmedAt: new Date().toISOString() });
}

async function writeMarker(client: pg.Client, publication: string, slots: string[]): Promise<void> {
  const doc = await readMarkerDoc(client, publication);
  await writeMarkerDoc(client, publication, { ...doc, slots });
}

async function writeMarkerDoc(client: pg.Client, publication: string, doc: Marker): Promise<void> {
  const text = `${MARKER_PREFIX}${JSON.stringify({ ...doc, slots: [...new Set(doc.slots)].sort() })}`;
  try {
    await client.query(`COMMENT ON PUBLICATION ${publication} IS ${pg.escapeLiteral(text)}`);
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      throw new ConfigError(
        'postgres.publication',
        `the role must own publication ${publication} so outboxd can record its slot there (it is how a lost slot is told from a first start): ALTER PUBLICATION ${publication} OWNER TO <role>`,
      );
    }
    throw classifyPgError(err, `recording the slot on publication ${publication}`);
  }
}

/**
 * Returns the slot, creating it on the first start. Throws SlotError when the slot is lost,
 * invalidated, belongs to another database or plugin, or is missing and may not be created.
 */
export async function ensureSlot(
  client: pg.Client,
  cfg: PostgresConfig,
  onWait: (blockers: Blocker[], waitedMs: number) => void = () => undefined,
): Promise<{ slot: SlotInfo; created: boolean }> {
  const name = cfg.slot;
  const marker = await readMarker(client, cfg.publication);
  const existing = await inspectSlot(client, name);
  if (existing) {
    checkSlotUsable(existing, await currentDatabase(client));
    if (!marker.includes(name)) await writeMarker(client, cfg.publication, [...marker, name]);
    return { slot: existing, created: false };
  }
  if (marker.includes(name)) {
    throw new SlotError(
      'SLOT_LOST',
      `replication slot ${name} is gone (it existed: publication ${cfg.publication} records it). Rows written while it was missing may never have been relayed, so outboxd will not recreate it. See docs/runbook.md#lost-slot; to start over from now, clear the marker: COMMENT ON PUBLICATION ${cfg.publication} IS NULL`,
    );
  }
  if (!cfg.createSlot) {
    throw new SlotError(
      'SLOT_MISSING',
      `replication slot ${name} does not exist and postgres.createSlot is false; create it: SELECT pg_create_logical_replication_slot('${name}', 'pgoutput')`,
    );
  }
  // Marker first: if the role cannot write it, fail before a slot exists that would pin WAL.
  await writeMarker(client, cfg.publication, [...marker, name]);
  try {
    await createSlotWatched(client, cfg, onWait);
  } catch (err) {
    // 42710: another instance created it a moment ago; use theirs.
    if ((err as { code?: string }).code !== '42710') {
      // No slot came to exist: take its name back out of the marker, or the next start would
      // report it lost.
      await writeMarker(client, cfg.publication, marker).catch(() => undefined);
      throw classifyPgError(err, `creating replication slot ${name}`);
    }
  }
  const slot = await inspectSlot(client, name);
  if (!slot) throw new SlotError('SLOT_LOST', `replication slot ${name} vanished right after it was created`);
  return { slot, created: true };
}

/** A transaction that slot creation waits for. */
export interface Blocker {
  pid: number;
  ageSeconds: number;
  state: string;
  application: string;
}

/** First report of what slot creation waits for, then every BLOCKER_REPORT_MS. */
const BLOCKER_FIRST_MS = 2_000;
const BLOCKER_REPORT_MS = 10_000;

/**
 * Creates the slot. Postgres waits for every transaction running at that moment to end before it
 * can hand out a consistent point, so this may wait: it gets its own bound,
 * `postgres.slotCreateTimeout`, instead of the admin connection's statement timeout. While it
 * waits, `onWait` hears which transactions it waits for (from pg_stat_activity, on a second
 * connection) after 2 s and then every 10 s.
 */
async function createSlotWatched(
  client: pg.Client,
  cfg: PostgresConfig,
  onWait: (blockers: Blocker[], waitedMs: number) => void,
): Promise<void> {
  const started = Date.now();
  const ownPid = (client as unknown as { processID?: number }).processID ?? 0;
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
    await client.query(`SELECT set_config('statement_timeout', $1, false)`, [String(cfg.slotCreateTimeoutMs)]);
    try {
      await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [cfg.slot]);
    } finally {
      await client.query(`SELECT set_config('statement_timeout', $1, false)`, [String(cfg.statementTimeoutMs)]).catch(() => undefined);
    }
  } catch (err) {
    if ((err as { code?: string }).code === '57014') {
      throw new PgConnectionError(
        `creating replication slot ${cfg.slot}: still waiting for running transactions to end after ${Math.round(cfg.slotCreateTimeoutMs / 1000)} s (postgres.slotCreateTimeout); retrying`,
        err,
      );
    }
    throw err;
  } finally {
    done = true;
    clearTimeout(timer);
    await reporting;
    await (watcher as pg.Client | null)?.end().catch(() => undefined);
  }
}

export function checkSlotUsable(slot: SlotInfo, database: string): void {
  if (slot.plugin !== 'pgoutput') {
    throw new SlotError(
      'SLOT_INVALIDATED',
      `replication slot ${slot.name} uses plugin "${slot.plugin}", outboxd needs pgoutput; pick another postgres.slot`,
    );
  }
  if (slot.database !== database) {
    throw new SlotError('SLOT_INVALIDATED', `replication slot ${slot.name} belongs to database "${slot.database}", not "${database}"`);
  }
  if (slot.walStatus === 'lost' || slot.invalidationReason) {
    throw new SlotError(
      'SLOT_INVALIDATED',
      `replication slot ${slot.name} is invalidated (${slot.invalidationReason ?? 'wal_status lost'}): the WAL it needed was removed, rows may have been lost. See docs/runbook.md#lost-slot`,
    );
  }
}

async function currentDatabase(client: pg.Client): Promise<string> {
  const { rows } = await client.query<{ db: string }>('SELECT current_database() AS db');
  return rows[0]?.db ?? '';
}

export interface SlotLag {
  lagBytes: number;
  retainedBytes: number;
  walStatus: string | null;
  active: boolean;
  confirmedFlushLsn: Lsn | null;
}

export async function slotLag(client: pg.Client, slot: string): Promise<SlotLag | null> {
  const { rows } = await client.query<{
    lag: string | null;
    retained: string | null;
    wal_status: string | null;
    active: boolean;
    confirmed: string | null;
  }>(
    `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::text AS lag, (pg_current_wal_lsn() - restart_lsn)::text AS retained,
            wal_status, active, confirmed_flush_lsn::text AS confirmed
       FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  const r = rows[0];
  if (!r) return null;
  return {
    lagBytes: Number(r.lag ?? 0),
    retainedBytes: Number(r.retained ?? 0),
    walStatus: r.wal_status,
    active: r.active,
    confirmedFlushLsn: r.confirmed ? parseLsn(r.confirmed) : null,
  };
}
