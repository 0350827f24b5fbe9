import type pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import { SlotError } from '../errors.js';
import { type Marker, type Recovery, readMarker, updateMarker, withRecovery, withSlot, withoutSlot } from '../postgres/marker.js';
import { alreadyExists, classifyPgError } from '../postgres/pg-errors.js';
import { checkOneShardSet } from '../postgres/shard-sets.js';
import {
  type ExportedSnapshot,
  type OnWait,
  createSlot,
  createSlotExporting,
  enableFailover,
  requireFailoverSlots,
} from './slot-create.js';
import { type LostSlot, type SlotInfo, checkSlotUsable, currentDatabase, inspectSlot, lostSlot } from './slot.js';

/** What a session streams from, and whether it must first recover what a lost slot held. */
export interface EnsuredSlot {
  readonly slot: SlotInfo;
  readonly created: boolean;
  /**
   * postgres.onLostSlot: recover-from-outbox: the new slot's recovery, to run before it streams:
   * publish again, in exactly `snapshot`, every retained row from `recovery.fromXid` on.
   */
  readonly recovery?: { readonly recovery: Recovery; readonly snapshot: ExportedSnapshot };
}

/**
 * Returns the slot, creating it on the first start (a failover slot when postgres.failover is
 * set, and an existing one made so). Throws SlotError when the slot is lost (see lostSlot) and
 * may not be recovered, belongs to another database or plugin, or is missing and may not be
 * created; ConfigError when postgres.failover asks for what the server lacks.
 */
export async function ensureSlot(client: pg.Client, cfg: PostgresConfig, onWait: OnWait = () => undefined): Promise<EnsuredSlot> {
  const name = cfg.slot;
  if (cfg.failover) await requireFailoverSlots(client);
  const marker = await readMarker(client, cfg.publication);
  const existing = await inspectSlot(client, name);
  // A recovery that a crash interrupted. Its slot has never streamed (the recovery is forgotten
  // only once its rows are published again, before streaming), so it is made again: its exported
  // snapshot went with the crashed session, and a later one would not be the same (slot-create.ts).
  const unfinished = marker.recoveries.get(name);
  if (unfinished) return recover(client, cfg, unfinished, existing, onWait);
  const lost = await lostSlot(client, cfg, existing, marker.slots.includes(name));
  if (lost) {
    // postgres.onLostSlot: `exit` is this throw (exit code 4).
    if (cfg.onLostSlot !== 'recover-from-outbox') throw new SlotError(lost.code, lost.message);
    return recover(client, cfg, recoveryOf(cfg, marker, lost), existing, onWait);
  }
  if (existing) {
    checkSlotUsable(existing, await currentDatabase(client));
    if (!marker.slots.includes(name))
      await updateMarker(client, cfg.publication, (m) => (m.slots.includes(name) ? null : withSlot(m, name)));
    if (cfg.failover && !existing.failover) {
      await enableFailover(client, cfg);
      return { slot: { ...existing, failover: true }, created: false };
    }
    return { slot: existing, created: false };
  }
  if (!cfg.createSlot) {
    throw new SlotError(
      'SLOT_MISSING',
      `replication slot ${name} does not exist and postgres.createSlot is false; create it: SELECT pg_create_logical_replication_slot('${name}', 'pgoutput'${cfg.failover ? ', false, false, true' : ''})`,
    );
  }
  await checkOneShardSet(client, cfg, marker);
  const before = await recordSlot(client, cfg);
  try {
    await createSlot(client, cfg, onWait);
  } catch (err) {
    // 42710: another instance created it a moment ago; use theirs.
    if (!alreadyExists(err)) {
      await unrecordSlot(client, cfg, before);
      throw classifyPgError(err, `creating replication slot ${name}`);
    }
  }
  return { slot: await created(client, name), created: true };
}

/**
 * The recovery of `lost`: from its own slot's confirmed epoch, never another slot's (each relay on
 * an outbox confirms its own rows). Refuses, as `exit` would, when the slot recorded none:
 * which rows to publish again is unknown.
 */
function recoveryOf(cfg: PostgresConfig, marker: Marker, lost: LostSlot): Recovery {
  const epoch = marker.epochs.get(cfg.slot);
  if (epoch === undefined) {
    throw new SlotError(
      lost.code,
      `${lost.message.replace(/\. See docs\/runbook\.md.*$/, '')}; postgres.onLostSlot is recover-from-outbox, but publication ${cfg.publication} records no confirmed epoch for slot ${cfg.slot} (its leader records one every outbox.prune.interval once its watermark passes it), so which rows to publish again is unknown. See docs/runbook.md#lost-slot`,
    );
  }
  return { fromXid: epoch.xid, since: epoch.since, reason: lost.kind };
}

/**
 * Records the recovery in the marker (so that a crash redoes it), drops what is left of the old
 * slot, and creates a new one that exports its snapshot. The caller then publishes again, in that
 * snapshot, the rows the recovery names (replay/recover.ts), and only then streams.
 */
async function recover(
  client: pg.Client,
  cfg: PostgresConfig,
  recovery: Recovery,
  existing: SlotInfo | null,
  onWait: OnWait,
): Promise<EnsuredSlot> {
  await updateMarker(client, cfg.publication, (m) => withRecovery(withSlot(m, cfg.slot), cfg.slot, recovery));
  // An invalidated slot, or the never-streamed slot of an interrupted recovery. Active means
  // another session streams it (55006: wait as a standby).
  if (existing) await client.query('SELECT pg_drop_replication_slot($1)', [cfg.slot]);
  let snapshot: ExportedSnapshot;
  try {
    snapshot = await createSlotExporting(client, cfg, onWait);
  } catch (err) {
    throw classifyPgError(err, `creating replication slot ${cfg.slot}`);
  }
  return { slot: await created(client, cfg.slot), created: true, recovery: { recovery, snapshot } };
}

/**
 * Records the slot before creating it: if the role cannot write the marker, this fails before a
 * slot exists that would pin WAL. Returns whether it was recorded before.
 */
async function recordSlot(client: pg.Client, cfg: PostgresConfig): Promise<boolean> {
  let was = false;
  await updateMarker(client, cfg.publication, (m) => {
    was = m.slots.includes(cfg.slot);
    return was ? null : withSlot(m, cfg.slot);
  });
  return was;
}

/** No slot came to exist: take its name back out (unless recorded before), or the next start would report it lost. */
async function unrecordSlot(client: pg.Client, cfg: PostgresConfig, wasRecorded: boolean): Promise<void> {
  if (wasRecorded) return;
  await updateMarker(client, cfg.publication, (m) => withoutSlot(m, cfg.slot)).catch(() => undefined);
}

async function created(client: pg.Client, name: string): Promise<SlotInfo> {
  const slot = await inspectSlot(client, name);
  if (!slot) throw new SlotError('SLOT_LOST', `replication slot ${name} vanished right after it was created`);
  return slot;
}

/** Lost-slot recovery is done: the marker forgets it (the slot's other entries stay). */
export async function finishRecovery(client: pg.Client, cfg: PostgresConfig): Promise<void> {
  await updateMarker(client, cfg.publication, (m) => (m.recoveries.has(cfg.slot) ? withRecovery(m, cfg.slot, null) : null));
}
