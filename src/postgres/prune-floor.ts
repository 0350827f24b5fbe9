import type pg from 'pg';
import type { TableConfig } from '../config/config.js';
import { type Marker, markersOf } from './marker.js';

/**
 * How far pruning may go in one outbox table: below the smallest confirmed epoch of every slot
 * that outboxd recorded for that table, on any publication that publishes it (a second relay to
 * another broker, a shard). One relay's epoch says nothing of another's rows: each relay confirms
 * its own. A recorded slot without an epoch holds pruning entirely, since nothing is known of
 * what it confirmed; a slot gone for good is forgotten only by `outboxd retire`, never by a guess.
 */
export type Floor =
  /** Delete below `xid`, the epoch of `slot` (the smallest). */
  | { readonly kind: 'epoch'; readonly xid: bigint; readonly slot: string; readonly publication: string }
  /** Delete nothing: `slot` (of `publication`) recorded no epoch yet. */
  | { readonly kind: 'held'; readonly slot: string; readonly publication: string };

/** The floor over the markers of a table's publications; null when no slot is recorded at all. */
export function floorOf(markers: ReadonlyMap<string, Marker>): Floor | null {
  let floor: Floor | null = null;
  for (const [publication, m] of markers) {
    for (const slot of m.slots) {
      const epoch = m.epochs.get(slot);
      if (epoch === undefined) return { kind: 'held', slot, publication };
      const xid = BigInt(epoch.xid);
      if (floor === null || (floor.kind === 'epoch' && xid < floor.xid)) floor = { kind: 'epoch', xid, slot, publication };
    }
  }
  return floor;
}

/** Reads the markers of every publication of `table` and returns its floor. */
export async function readFloor(client: pg.Client, table: TableConfig): Promise<Floor | null> {
  return floorOf(await markersOf(client, table.schema, table.table));
}

/** One line on what holds a table's pruning back, for the log (only when it changes). */
export function describeFloor(f: Floor | null, ownSlot: string): string {
  if (f === null) return 'no slot is recorded for this table: nothing is pruned';
  if (f.kind === 'held')
    return `slot ${f.slot} (publication ${f.publication}) has recorded no confirmed epoch: nothing is pruned until it does, or until \`outboxd retire\` forgets it`;
  if (f.slot === ownSlot) return `pruning below this relay's own confirmed epoch, transaction ${f.xid}`;
  return `pruning below the confirmed epoch of slot ${f.slot} (publication ${f.publication}), transaction ${f.xid}: the oldest of every slot recorded for this table`;
}
