import pg from 'pg';
import { quoteIdent } from '../config/config.js';
import { ConfigError } from '../errors.js';
import { classifyPgError, notAllowed } from './pg-errors.js';

/**
 * THE LOST-SLOT MARKER (docs/adr/0003, 0011, 0012): a comment on the publication, `outboxd:` and
 * a JSON document, that outlives the slots it describes. It holds, per slot:
 *
 * - that the slot exists or existed (`slots`): a recorded slot missing from the server is lost,
 *   never a first start;
 * - its confirmed epoch (`epochs[slot]`): an xid (xid8, as text) such that every outbox row from
 *   a transaction below it was confirmed by the broker *for that slot*. Lost-slot recovery of that
 *   slot publishes again the rows at or after it; pruning deletes only rows below the smallest
 *   epoch of every slot recorded for the outbox (prune.ts);
 * - a lost-slot recovery in progress (`recoveries[slot]`), recorded before the new slot exists.
 *
 * An epoch belongs to one slot: two relays on one outbox (say one to Kafka and one to RabbitMQ)
 * confirm different rows, and one's epoch says nothing of the other's (issue 21).
 *
 * Every change is a read-modify-write under a transaction-level advisory lock on the publication
 * (`update`), so two relays never erase each other's entries. Fields this code does not know are
 * kept as they are.
 *
 * Format history: v1 (before 0.2) kept one `confirmedXid` for the whole publication and one
 * `recovering` object. A v1 epoch is taken over only when the marker records exactly one slot
 * (then it can only be that slot's); otherwise it is dropped and each relay records its own
 * within one `outbox.prune.interval`. The first recovery in progress is also written in v1 form,
 * so a relay of the older version, whose writes keep only v1 fields, cannot erase it.
 */

const PREFIX = 'outboxd:';
const VERSION = 2;

export interface SlotEpoch {
  /** xid8 as decimal text: every outbox row of this slot from a transaction below it is confirmed. */
  readonly xid: string;
  /** When the epoch began (the server's clock, timestamptz text). */
  readonly since: string;
  /** When it was recorded (ISO time). */
  readonly at: string;
}

export interface Recovery {
  /** Publish again the retained rows from transactions at or after this xid8. */
  readonly fromXid: string;
  readonly since: string;
  /** Why the slot was lost: dropped, not-synchronised, invalidated. */
  readonly reason: string;
}

/**
 * A slot's part in a reshard (docs/adr/0020-shards.md, lifecycle/reshard.ts): an old shard's slot
 * is `retired` once everything before the fence `id` is on the broker; a new shard's slot is
 * `waiting` (for the old ones to retire, then for the fence in its stream) and `started` once past
 * the fence. `peers`: the other set's slots, each with its publication.
 */
export interface ReshardState {
  readonly id: string;
  readonly state: 'waiting' | 'started' | 'retired';
  readonly peers: ReadonlyArray<{ readonly slot: string; readonly publication: string }>;
}

export interface Marker {
  /** Slots outboxd created or adopted for this publication, sorted. */
  readonly slots: readonly string[];
  readonly epochs: ReadonlyMap<string, SlotEpoch>;
  readonly recoveries: ReadonlyMap<string, Recovery>;
  readonly reshards?: ReadonlyMap<string, ReshardState>;
}

export const EMPTY_MARKER: Marker = { slots: [], epochs: new Map(), recoveries: new Map() };

/** The marker as read, with the fields this version does not know (kept on write). */
interface Read {
  readonly marker: Marker;
  readonly rest: Record<string, unknown>;
}

const XID = /^\d+$/;
const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Parses a comment; anything that is not an outboxd marker is an empty one. */
export function parseMarker(comment: string | null | undefined): Read {
  if (!comment?.startsWith(PREFIX)) return { marker: EMPTY_MARKER, rest: {} };
  let doc: Record<string, unknown>;
  try {
    const parsed = JSON.parse(comment.slice(PREFIX.length)) as unknown;
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) return { marker: EMPTY_MARKER, rest: {} };
    doc = parsed as Record<string, unknown>;
  } catch {
    return { marker: EMPTY_MARKER, rest: {} };
  }
  const {
    v: _v,
    slots: rawSlots,
    epochs: rawEpochs,
    recoveries: rawRecoveries,
    confirmedXid,
    confirmedSince,
    confirmedAt,
    recovering,
    reshards: rawReshards,
    ...rest
  } = doc;
  const slots = Array.isArray(rawSlots) ? [...new Set(rawSlots.filter((s): s is string => typeof s === 'string'))].sort() : [];
  const epochs = new Map<string, SlotEpoch>();
  for (const [slot, e] of entries(rawEpochs)) {
    const xid = text(e.xid);
    if (xid !== undefined && XID.test(xid)) epochs.set(slot, { xid, since: text(e.since) ?? '', at: text(e.at) ?? '' });
  }
  // v1: one epoch for the publication. Only with a single slot is it known to be that slot's.
  const v1Xid = text(confirmedXid);
  if (v1Xid !== undefined && XID.test(v1Xid) && slots.length === 1 && !epochs.has(slots[0] as string)) {
    epochs.set(slots[0] as string, { xid: v1Xid, since: text(confirmedSince) ?? '', at: text(confirmedAt) ?? '' });
  }
  const recoveries = new Map<string, Recovery>();
  for (const [slot, r] of entries(rawRecoveries)) {
    const rec = recovery(r);
    if (rec) recoveries.set(slot, rec);
  }
  if (recovering && typeof recovering === 'object') {
    const r = recovering as Record<string, unknown>;
    const slot = text(r.slot);
    const rec = recovery(r);
    if (slot !== undefined && rec && !recoveries.has(slot)) recoveries.set(slot, rec);
  }
  const reshards = new Map<string, ReshardState>();
  for (const [slot, r] of entries(rawReshards)) {
    const id = text(r.id);
    const state = r.state === 'waiting' || r.state === 'started' || r.state === 'retired' ? r.state : undefined;
    const peers = Array.isArray(r.peers)
      ? r.peers.filter((p): p is { slot: string; publication: string } => typeof p?.slot === 'string' && typeof p?.publication === 'string')
      : [];
    if (id !== undefined && state !== undefined) reshards.set(slot, { id, state, peers });
  }
  return { marker: { slots, epochs, recoveries, ...(reshards.size > 0 ? { reshards } : {}) }, rest };
}

function recovery(r: Record<string, unknown>): Recovery | null {
  const fromXid = text(r.fromXid);
  if (fromXid === undefined || !XID.test(fromXid)) return null;
  return { fromXid, since: text(r.since) ?? '', reason: text(r.reason) ?? '' };
}

function entries(v: unknown): Array<[string, Record<string, unknown>]> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return [];
  return Object.entries(v as Record<string, unknown>).filter(
    (e): e is [string, Record<string, unknown>] => e[1] !== null && typeof e[1] === 'object',
  );
}

/** The comment that records `m` (and the unknown fields `rest`). */
export function formatMarker(m: Marker, rest: Record<string, unknown> = {}): string {
  const doc: Record<string, unknown> = { ...rest, v: VERSION, slots: [...new Set(m.slots)].sort() };
  if (m.epochs.size > 0) doc.epochs = Object.fromEntries([...m.epochs].sort(([a], [b]) => (a < b ? -1 : 1)));
  if (m.recoveries.size > 0) {
    doc.recoveries = Object.fromEntries(m.recoveries);
    // For a relay of the v1 format, which keeps only the fields it knows when it writes.
    const [slot, r] = [...m.recoveries][0] as [string, Recovery];
    doc.recovering = { slot, ...r };
  }
  if (m.reshards && m.reshards.size > 0) doc.reshards = Object.fromEntries(m.reshards);
  return `${PREFIX}${JSON.stringify(doc)}`;
}

/** Reads the marker of `publication` (an empty one when there is none). */
export async function readMarker(client: pg.Client, publication: string): Promise<Marker> {
  return (await readRaw(client, publication)).marker;
}

async function readRaw(client: pg.Client, publication: string): Promise<Read> {
  const { rows } = await client.query<{ c: string | null }>(
    `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = $1`,
    [publication],
  );
  return parseMarker(rows[0]?.c);
}

/**
 * The markers of every publication that publishes `schema.table` (directly, in a schema, or for
 * all tables), by publication. Pruning reads them all: relays on other publications of the same
 * outbox (shards, a second broker) have rows to confirm too.
 */
export async function markersOf(client: pg.Client, schema: string, table: string): Promise<Map<string, Marker>> {
  const { rows } = await client.query<{ pubname: string; c: string | null }>(
    `SELECT p.pubname, obj_description(p.oid, 'pg_publication') AS c
       FROM pg_publication p
      WHERE p.puballtables
         OR EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = p.pubname AND t.schemaname = $1 AND t.tablename = $2)
      ORDER BY p.pubname`,
    [schema, table],
  );
  return new Map(rows.map((r) => [r.pubname, parseMarker(r.c).marker]));
}

/**
 * Changes the marker atomically: in one transaction, under an advisory lock that every writer of
 * this publication's marker takes, reads it, applies `change` and writes the result (nothing when
 * `change` returns null). Returns the marker as it now stands.
 *
 * `client` must not be inside a transaction. Rejects with a ConfigError when the role cannot
 * comment on the publication (it must own it).
 */
export async function updateMarker(client: pg.Client, publication: string, change: (m: Marker) => Marker | null): Promise<Marker> {
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtextextended('outboxd.marker.' || $1, 0))`, [publication]);
    const { marker, rest } = await readRaw(client, publication);
    const next = change(marker);
    if (next !== null)
      await client.query(`COMMENT ON PUBLICATION ${quoteIdent(publication)} IS ${pg.escapeLiteral(formatMarker(next, rest))}`);
    await client.query('COMMIT');
    return next ?? marker;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    if (notAllowed(err)) {
      throw new ConfigError(
        'postgres.publication',
        `the role must own publication ${publication} so outboxd can record its slot there (it is how a lost slot is told from a first start): ALTER PUBLICATION ${quoteIdent(publication)} OWNER TO <role>`,
      );
    }
    throw classifyPgError(err, `recording the slot on publication ${publication}`);
  }
}

// The changes, pure. Each touches one slot's entries and leaves every other slot's as it is.

export function withSlot(m: Marker, slot: string): Marker {
  return m.slots.includes(slot) ? m : { ...m, slots: [...m.slots, slot].sort() };
}

export function withoutSlot(m: Marker, slot: string): Marker {
  const epochs = new Map(m.epochs);
  epochs.delete(slot);
  const recoveries = new Map(m.recoveries);
  recoveries.delete(slot);
  const reshards = new Map(m.reshards);
  reshards.delete(slot);
  return { slots: m.slots.filter((s) => s !== slot), epochs, recoveries, reshards };
}

export function withEpoch(m: Marker, slot: string, epoch: SlotEpoch): Marker {
  const epochs = new Map(m.epochs);
  epochs.set(slot, epoch);
  return { ...withSlot(m, slot), epochs };
}

export function withRecovery(m: Marker, slot: string, r: Recovery | null): Marker {
  const recoveries = new Map(m.recoveries);
  if (r === null) recoveries.delete(slot);
  else recoveries.set(slot, r);
  return { ...m, recoveries };
}

export function withReshard(m: Marker, slot: string, r: ReshardState): Marker {
  const reshards = new Map(m.reshards);
  reshards.set(slot, r);
  // Not in `slots`: a new shard's entry is written before its slot exists (ensureSlot records it).
  return { ...m, reshards };
}
