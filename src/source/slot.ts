import pg from 'pg';
import { type PostgresConfig, quoteIdent } from '../config/config.js';
import { ConfigError, PgConnectionError, SlotError } from '../errors.js';
import { type Lsn, parseLsn } from '../lsn.js';
import { connectAdmin, connectSameHost, hostOf, serverVersion } from './connect.js';
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
  /** PostgreSQL 17+: standbys with sync_replication_slots keep a copy of it (false before 17). */
  failover: boolean;
  /**
   * PostgreSQL 17+: a copy synchronised from a primary. On a standby such a slot cannot be
   * streamed from. A promoted standby keeps the flag (17.10 does, measured): on a primary it
   * means nothing, and the slot is usable.
   */
  synced: boolean;
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
    failover: boolean;
    synced: boolean;
  }>(
    `SELECT slot_name, plugin, database, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status,
            ${(await serverVersion(client)) >= 170000 ? 'invalidation_reason AS invalidation, failover, synced' : 'NULL::text AS invalidation, false AS failover, false AS synced'}
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
    failover: r.failover,
    synced: r.synced,
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
  /** When that epoch began (the server's clock, timestamptz text), for the operator and the logs. */
  confirmedSince?: string;
  /** When confirmedXid was recorded (ISO time), for the operator. */
  confirmedAt?: string;
  /**
   * Lost-slot recovery in progress (postgres.onLostSlot: recover-from-outbox): set before the new
   * slot is created, cleared once the rows are published again; a start that finds it redoes it.
   */
  recovering?: { slot: string; fromXid: string; since: string; reason: string };
}

export async function readMarkerDoc(client: pg.Client, publication: string): Promise<Marker> {
  const { rows } = await client.query<{ c: string | null }>(
    `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = $1`,
    [publication],
  );
  const c = rows[0]?.c;
  if (!c?.startsWith(MARKER_PREFIX)) return { slots: [] };
  try {
    const doc = JSON.parse(c.slice(MARKER_PREFIX.length)) as Record<string, unknown>;
    const text = (v: unknown) => (typeof v === 'string' ? v : undefined);
    const r = doc.recovering as Record<string, unknown> | undefined;
    const recovering =
      r && typeof r === 'object' && text(r.slot) && /^\d+$/.test(text(r.fromXid) ?? '') && text(r.since)
        ? { slot: text(r.slot) as string, fromXid: text(r.fromXid) as string, since: text(r.since) as string, reason: text(r.reason) ?? '' }
        : undefined;
    return {
      slots: Array.isArray(doc.slots) ? doc.slots.filter((s): s is string => typeof s === 'string') : [],
      ...(/^\d+$/.test(text(doc.confirmedXid) ?? '') ? { confirmedXid: doc.confirmedXid as string } : {}),
      ...(text(doc.confirmedSince) ? { confirmedSince: doc.confirmedSince as string } : {}),
      ...(text(doc.confirmedAt) ? { confirmedAt: doc.confirmedAt as string } : {}),
      ...(recovering ? { recovering } : {}),
    };
  } catch {
    return { slots: [] };
  }
}

export async function readMarker(client: pg.Client, publication: string): Promise<string[]> {
  return (await readMarkerDoc(client, publication)).slots;
}

/** Records a passed pruning epoch in the marker (keeping its slots), before anything is pruned by it. */
export async function recordConfirmedXid(client: pg.Client, publication: string, xid: bigint, since: string): Promise<void> {
  const doc = await readMarkerDoc(client, publication);
  await writeMarkerDoc(client, publication, {
    ...doc,
    confirmedXid: xid.toString(),
    confirmedSince: since,
    confirmedAt: new Date().toISOString(),
  });
}

/** Lost-slot recovery has published the rows again: the marker forgets it. */
export async function finishRecovery(client: pg.Client, publication: string): Promise<void> {
  const { recovering: _, ...doc } = await readMarkerDoc(client, publication);
  await writeMarkerDoc(client, publication, doc);
}

async function writeMarker(client: pg.Client, publication: string, slots: string[]): Promise<void> {
  const doc = await readMarkerDoc(client, publication);
  await writeMarkerDoc(client, publication, { ...doc, slots });
}

async function writeMarkerDoc(client: pg.Client, publication: string, doc: Marker): Promise<void> {
  const text = `${MARKER_PREFIX}${JSON.stringify({ ...doc, slots: [...new Set(doc.slots)].sort() })}`;
  try {
    await client.query(`COMMENT ON PUBLICATION ${quoteIdent(publication)} IS ${pg.escapeLiteral(text)}`);
  } catch (err) {
    if ((err as { code?: string }).code === '42501') {
      throw new ConfigError(
        'postgres.publication',
        `the role must own publication ${publication} so outboxd can record its slot there (it is how a lost slot is told from a first start): ALTER PUBLICATION ${quoteIdent(publication)} OWNER TO <role>`,
      );
    }
    throw classifyPgError(err, `recording the slot on publication ${publication}`);
  }
}

/**
 * Returns the slot, creating it on the first start (a failover slot when postgres.failover is
 * set, and an existing one made so). Throws SlotError when the slot is lost (see lostSlot),
 * belongs to another database or plugin, or is missing and may not be created; ConfigError when
 * postgres.failover asks for what the server lacks.
 */
export async function ensureSlot(
  client: pg.Client,
  cfg: PostgresConfig,
  onWait: (blockers: Blocker[], waitedMs: number) => void = () => undefined,
): Promise<{ slot: SlotInfo; created: boolean; recovering?: Recovering | undefined }> {
  const name = cfg.slot;
  if (cfg.failover) await requireFailoverSlots(client);
  const doc = await readMarkerDoc(client, cfg.publication);
  const marker = doc.slots;
  const existing = await inspectSlot(client, name);
  const lost = await lostSlot(client, cfg, existing, marker.includes(name));
  if (lost) {
    // postgres.onLostSlot: `exit` is this throw (exit code 4).
    if (cfg.onLostSlot !== 'recover-from-outbox') throw new SlotError(lost.code, lost.message);
    return recoverSlot(client, cfg, doc, lost, existing, onWait);
  }
  // A recovery that a crash interrupted: its slot exists, its rows are still to publish again.
  const recovering = doc.recovering?.slot === name ? doc.recovering : undefined;
  if (existing) {
    checkSlotUsable(existing, await currentDatabase(client));
    if (!marker.includes(name)) await writeMarker(client, cfg.publication, [...marker, name]);
    if (cfg.failover && !existing.failover) {
      await enableFailover(client, cfg);
      return { slot: { ...existing, failover: true }, created: false, recovering };
    }
    return { slot: existing, created: false, recovering };
  }
  if (!cfg.createSlot) {
    throw new SlotError(
      'SLOT_MISSING',
      `replication slot ${name} does not exist and postgres.createSlot is false; create it: SELECT pg_create_logical_replication_slot('${name}', 'pgoutput'${cfg.failover ? ', false, false, true' : ''})`,
    );
  }
  return { slot: await createRecorded(client, cfg, marker, onWait), created: true, recovering };
}

/** Lost-slot recovery's bounds: publish again the rows from transactions at or after `fromXid`. */
export type Recovering = NonNullable<Marker['recovering']>;

/**
 * postgres.onLostSlot: recover-from-outbox. Records the recovery in the marker (so a crash
 * redoes it), drops an invalidated slot, creates a new one; the caller then publishes again the
 * rows the marker's last confirmed epoch does not cover (recovery.ts), and only then streams.
 * Refuses, as `exit` would, when no epoch was ever recorded: which rows to publish is unknown.
 */
async function recoverSlot(
  client: pg.Client,
  cfg: PostgresConfig,
  doc: Marker,
  lost: LostSlot,
  existing: SlotInfo | null,
  onWait: (blockers: Blocker[], waitedMs: number) => void,
): Promise<{ slot: SlotInfo; created: boolean; recovering: Recovering }> {
  if (doc.confirmedXid === undefined || doc.confirmedSince === undefined) {
    throw new SlotError(
      lost.code,
      `${lost.message.replace(/\. See docs\/runbook\.md.*$/, '')}; postgres.onLostSlot is recover-from-outbox, but publication ${cfg.publication} records no confirmed epoch (the leader records one every outbox.prune.interval once its watermark passes it), so which rows to publish again is unknown. See docs/runbook.md#lost-slot`,
    );
  }
  const recovering: Recovering = { slot: cfg.slot, fromXid: doc.confirmedXid, since: doc.confirmedSince, reason: lost.kind };
  await writeMarkerDoc(client, cfg.publication, { ...doc, recovering });
  if (existing) await client.query('SELECT pg_drop_replication_slot($1)', [cfg.slot]);
  return { slot: await createRecorded(client, cfg, doc.slots, onWait), created: true, recovering };
}

/** Creates the slot, recording it in the marker first. */
async function createRecorded(
  client: pg.Client,
  cfg: PostgresConfig,
  marker: string[],
  onWait: (blockers: Blocker[], waitedMs: number) => void,
): Promise<SlotInfo> {
  const name = cfg.slot;
  // Marker first: if the role cannot write it, fail before a slot exists that would pin WAL.
  await writeMarker(client, cfg.publication, [...marker, name]);
  try {
    await createSlotWatched(client, cfg, onWait);
  } catch (err) {
    // 42710: another instance created it a moment ago; use theirs.
    if ((err as { code?: string }).code !== '42710') {
      // No slot came to exist: take its name back out of the marker (unless it was recorded
      // before, as a lost one is), or the next start would report it lost.
      await writeMarker(client, cfg.publication, marker).catch(() => undefined);
      throw classifyPgError(err, `creating replication slot ${name}`);
    }
  }
  const slot = await inspectSlot(client, name);
  if (!slot) throw new SlotError('SLOT_LOST', `replication slot ${name} vanished right after it was created`);
  return slot;
}

/** Why the recorded slot cannot be streamed from: what postgres.onLostSlot acts on. */
export interface LostSlot {
  code: 'SLOT_LOST' | 'SLOT_INVALIDATED';
  /** dropped: missing on the server it was made on; not-synchronised: missing on a promoted standby; invalidated: its WAL is gone. */
  kind: 'dropped' | 'not-synchronised' | 'invalidated';
  slot: string;
  /** host:port of the server it was looked for on. */
  host: string;
  /** Where the slot stood, when it still exists (invalidated); null when it is missing. */
  confirmedFlushLsn: Lsn | null;
  /** One line: what happened, what it means, where to read on. */
  message: string;
}

/**
 * The one decision of "lost": the slot the publication's marker records (`recorded`) cannot be
 * streamed from, and a new one would start at "now", skipping every row in between (ADR 0003).
 * Null when the slot is usable, or absent and never made (a first start).
 *
 * Only a server that accepts writes decides. On a standby (postgres.url without
 * target_session_attrs=read-write, during a failover) a missing slot or a synchronised copy
 * means "not yet": a PgConnectionError, retried until a primary answers.
 *
 * After a failover the new primary is on a later timeline. A recorded slot missing there was
 * not synchronised to it before the promotion (no failover slot, no sync_replication_slots, or
 * the promotion came before the first sync); on timeline 1 it was dropped.
 */
async function lostSlot(client: pg.Client, cfg: PostgresConfig, existing: SlotInfo | null, recorded: boolean): Promise<LostSlot | null> {
  const host = hostOf(client);
  const name = cfg.slot;
  if (existing && existing.walStatus !== 'lost' && !existing.invalidationReason && !existing.synced) return null;
  if (!existing && !recorded) return null;
  const { rows } = await client.query<{ in_recovery: boolean; walfile: string | null }>(
    `SELECT pg_is_in_recovery() AS in_recovery,
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile`,
  );
  if (rows[0]?.in_recovery) {
    throw new PgConnectionError(
      existing
        ? `replication slot ${name} on ${host} is a copy synchronised from the primary, and ${host} is a standby (in recovery): it can be streamed from only after a promotion; add target_session_attrs=read-write to postgres.url`
        : `${host} is a standby (in recovery) without replication slot ${name}; add target_session_attrs=read-write to postgres.url`,
    );
  }
  if (existing) {
    if (existing.walStatus !== 'lost' && !existing.invalidationReason) return null; // synced, but on a promoted primary: usable
    return {
      code: 'SLOT_INVALIDATED',
      kind: 'invalidated',
      slot: name,
      host,
      confirmedFlushLsn: existing.confirmedFlushLsn,
      message: `${invalidatedMessage(existing)}${existing.synced ? ` (this copy was synchronised from the old primary and invalidated on ${host} before its promotion)` : ''}`,
    };
  }
  const timeline = Number.parseInt((rows[0]?.walfile ?? '').slice(0, 8), 16) || 1;
  if (timeline > 1) {
    return {
      code: 'SLOT_LOST',
      kind: 'not-synchronised',
      slot: name,
      host,
      confirmedFlushLsn: null,
      message: `replication slot ${name} is missing on ${host}, a promoted server (timeline ${timeline}): it was not synchronised to it before the failover (${cfg.failover ? 'check sync_replication_slots and hot_standby_feedback on the standby, synchronized_standby_slots on the primary, and that the sync had happened' : 'postgres.failover is false, so no standby keeps a copy'}). Rows written since may never have been relayed, so outboxd will not recreate it. See docs/runbook.md#failover`,
    };
  }
  return {
    code: 'SLOT_LOST',
    kind: 'dropped',
    slot: name,
    host,
    confirmedFlushLsn: null,
    message: `replication slot ${name} is gone (it existed: publication ${cfg.publication} records it). Rows written while it was missing may never have been relayed, so outboxd will not recreate it. See docs/runbook.md#lost-slot; to start over from now, clear the marker: COMMENT ON PUBLICATION ${quoteIdent(cfg.publication)} IS NULL`,
  };
}

/** postgres.failover needs failover slots: PostgreSQL 17 or later. */
async function requireFailoverSlots(client: pg.Client): Promise<void> {
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
async function enableFailover(client: pg.Client, cfg: PostgresConfig): Promise<void> {
  const repl = await connectSameHost(cfg, client, { replication: 'database' } as Partial<pg.ClientConfig>);
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
      // PostgreSQL 17: (slot_name, plugin, temporary, twophase, failover).
      if (cfg.failover) await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, false, true)`, [cfg.slot]);
      else await client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [cfg.slot]);
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
  if (slot.walStatus === 'lost' || slot.invalidationReason) throw new SlotError('SLOT_INVALIDATED', invalidatedMessage(slot));
}

function invalidatedMessage(slot: SlotInfo): string {
  return `replication slot ${slot.name} is invalidated (${slot.invalidationReason ?? 'wal_status lost'}): the WAL it needed was removed, rows may have been lost. See docs/runbook.md#lost-slot`;
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
