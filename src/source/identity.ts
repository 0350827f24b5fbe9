import type pg from 'pg';
import { OutboxdError } from '../errors.js';
import type { Origin, SourceIdentity, TimelineSwitch } from '../interfaces.js';
import { type Lsn, parseLsn } from '../lsn.js';
import type { Logger } from '../observability/logger.js';

/**
 * Where a replication session's positions come from (docs/adr/0009): the cluster's system
 * identifier, the database, the timeline the server writes or streams, and that timeline's
 * history. Positions of two sessions compare only through this.
 */

/**
 * IDENTIFY_SYSTEM, then on a promoted server (timeline above 1) TIMELINE_HISTORY, on a
 * replication connection. A history the server cannot give (its file is gone) leaves `history`
 * null, with a warning: then nothing from an earlier timeline counts as proof of anything.
 */
export async function identifySource(client: pg.Client, log: Logger): Promise<SourceIdentity> {
  const { rows } = await client.query<{ systemid: string; timeline: string | number; dbname: string | null }>('IDENTIFY_SYSTEM');
  const row = rows[0];
  if (!row?.dbname) throw new OutboxdError('PG_PROTOCOL', 'IDENTIFY_SYSTEM named no database');
  const timeline = Number(row.timeline);
  if (!Number.isSafeInteger(timeline) || timeline < 1) {
    throw new OutboxdError('PG_PROTOCOL', `IDENTIFY_SYSTEM named timeline "${String(row.timeline)}"`);
  }
  const source = { systemId: String(row.systemid), database: row.dbname, timeline };
  if (timeline === 1) return { ...source, history: [] };
  try {
    const history = await client.query<{ content: string | Buffer }>(`TIMELINE_HISTORY ${timeline}`);
    const content = history.rows[0]?.content;
    if (content === undefined) throw new Error('no row');
    return { ...source, history: parseTimelineHistory(typeof content === 'string' ? content : content.toString('utf8'), timeline) };
  } catch (err) {
    log.warn(
      { err, timeline },
      `the server could not give the history of timeline ${timeline}: no position of an earlier timeline (an exactly-once checkpoint) proves anything in this session`,
    );
    return { ...source, history: null };
  }
}

/**
 * A timeline history file: one line per ancestor, `<parent timeline>\t<switchpoint>\t<reason>`,
 * oldest first; blank lines and `#` comments are skipped (as Postgres's own reader does).
 * Throws on a line it cannot read, or on one that is not an ancestor of `timeline`.
 */
export function parseTimelineHistory(text: string, timeline: number): TimelineSwitch[] {
  const out: TimelineSwitch[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const [tli, lsn] = line.split(/\s+/);
    const parent = Number(tli);
    if (!Number.isSafeInteger(parent) || parent < 1 || parent >= timeline || lsn === undefined) {
      throw new Error(`unreadable line in the history of timeline ${timeline}: "${line}"`);
    }
    out.push({ timeline: parent, switchLsn: parseLsn(lsn) });
  }
  return out;
}

/**
 * The slot's confirmed position as the server this connection reaches has it (a replication
 * connection in database mode runs plain SQL), or null for a slot without one. The session's
 * watermark starts here: from the server it will stream from, not from another connection's.
 */
export async function slotPosition(client: pg.Client, slot: string): Promise<Lsn | null> {
  const { rows } = await client.query<{ lsn: string | null }>(
    `SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots WHERE slot_name = '${slot.replaceAll("'", "''")}'`,
  );
  const lsn = rows[0]?.lsn;
  return lsn ? parseLsn(lsn) : null;
}

/**
 * The WAL insert position of the primary a plain connection reaches, with its origin: a position
 * taken there (a pruning epoch's) compares only with a watermark of the same origin
 * (`Watermark.hasPassed`). The timeline is the first 8 hex digits of the WAL file name, which
 * Postgres forms with the timeline it inserts on (pg_control_checkpoint() names the last
 * checkpoint's, still the old one right after a promotion).
 */
export async function walInsertPoint(client: pg.Client): Promise<{ lsn: Lsn; origin: Origin }> {
  const { rows } = await client.query<{ lsn: string; file: string; system: string }>(
    `SELECT l::text AS lsn, pg_walfile_name(l) AS file, (SELECT system_identifier FROM pg_control_system())::text AS system
       FROM pg_current_wal_insert_lsn() AS l`,
  );
  const row = rows[0];
  if (!row) throw new OutboxdError('PG_PROTOCOL', 'pg_current_wal_insert_lsn() returned no row');
  return { lsn: parseLsn(row.lsn), origin: { systemId: row.system, timeline: Number.parseInt(row.file.slice(0, 8), 16) } };
}
