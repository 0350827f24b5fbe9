import type pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import { ConfigError } from '../errors.js';
import type { Marker } from './marker.js';

/**
 * One shard set per outbox at a time. A relay about to create its slot first looks for the slots
 * of another set of the same names: the unsharded `<slot>`, or `<slot>_i_of_M` of another count.
 * Starting beside a live set (say the chart's `shards` raised without `outboxd reshard`) would
 * publish the rows both sets see twice and out of order, so it is refused, unless a reshard made
 * this slot (its marker entry): then the fence divides the work.
 */
export async function checkOneShardSet(client: pg.Client, cfg: PostgresConfig, marker: Marker): Promise<void> {
  if (marker.reshards?.has(cfg.slot)) return;
  const base = cfg.shard?.slot ?? cfg.slot;
  const { rows } = await client.query<{ name: string }>(
    `SELECT slot_name::text AS name FROM pg_replication_slots
      WHERE slot_name = $1 OR (left(slot_name, length($1) + 1) = $1 || '_' AND substr(slot_name, length($1) + 2) ~ '^[0-9]+_of_[0-9]+$')`,
    [base],
  );
  const mine = (name: string) => cfg.shard !== undefined && name.endsWith(`_of_${cfg.shard.count}`) && name !== base;
  const others = rows.map((r) => r.name).filter((n) => n !== cfg.slot && !mine(n));
  if (others.length === 0) return;
  throw new ConfigError(
    'postgres.shard',
    `slot ${cfg.slot} does not exist, but ${others.join(', ')} of another shard set of this outbox do: both sets would publish the same rows, twice and out of order. Change the shard count with outboxd reshard (docs/runbook.md#resharding), or drop the other set's slots (outboxd retire --slot NAME) if it is gone for good`,
  );
}
