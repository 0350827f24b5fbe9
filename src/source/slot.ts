import type pg from 'pg';
import { type PostgresConfig, quoteIdent } from '../config/config.js';
import { PgConnectionError, SlotError } from '../errors.js';
import { type Lsn, parseLsn } from '../lsn.js';
import { serverVersion } from '../postgres/sql.js';
import { hostOf } from './connect.js';

/**
 * The replication slot as the server sees it: its state, whether a recorded one is lost, whether
 * it is usable, and its lag. Creating one is slot-create.ts; deciding what to do is ensure-slot.ts.
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
export async function lostSlot(
  client: pg.Client,
  cfg: PostgresConfig,
  existing: SlotInfo | null,
  recorded: boolean,
): Promise<LostSlot | null> {
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

export async function currentDatabase(client: pg.Client): Promise<string> {
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
