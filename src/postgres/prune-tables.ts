import { lockTimedOut } from './pg-errors.js';
import type pg from 'pg';
import type { TableConfig } from '../config/config.js';
import { type Shard, quoteIdent } from '../config/config.js';
import { shardFilter } from './shard.js';
import { tableFrozen, xminBelow } from './xid-sql.js';

/**
 * The SQL of pruning: the relations rows are deleted from, the batched DELETE, and the
 * lock-bounded transaction every step runs in (docs/adr/0011).
 */

/**
 * Runs `fn` in a transaction with `lock_timeout` set; resolves null when a lock wait timed out
 * (SQLSTATE 55P03), after rolling back. Other errors roll back and propagate.
 */
export async function bounded<T>(client: pg.Client, lockTimeoutMs: number, fn: (c: pg.Client) => Promise<T>): Promise<T | null> {
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(lockTimeoutMs))}`);
    const out = await fn(client);
    await client.query('COMMIT');
    return out;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    if (lockTimedOut(err)) return null;
    throw err;
  }
}

/**
 * The leaves of `relation` (a table or a partition, by its quoted name): itself when it is a plain
 * table, and every leaf partition at every level below it when it is partitioned. A `ctid` is
 * unique only within one leaf, so rows are deleted leaf by leaf.
 */
export async function leavesOf(client: pg.Client, relation: string): Promise<string[]> {
  const { rows } = await client.query<{ schema: string; name: string }>(
    `SELECT n.nspname AS schema, c.relname AS name
       FROM pg_partition_tree($1::regclass) t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE t.isleaf ORDER BY t.level, c.relname`,
    [relation],
  );
  // A plain table is no partition tree (no rows): it is its own leaf.
  return rows.length === 0 ? [relation] : rows.map((r) => `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`);
}

/**
 * Inheritance children (not partitions) of an outbox table, by name. Their rows are published
 * under each child's own name, which outboxd neither relays nor may prune: such a table is
 * refused at start (postgres/publication.ts).
 */
export async function inheritanceChildren(client: pg.Client, table: TableConfig): Promise<string[]> {
  const { rows } = await client.query<{ name: string }>(
    `SELECT format('%I.%I', n.nspname, c.relname) AS name
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE i.inhparent = to_regclass($1) AND NOT c.relispartition ORDER BY 1`,
    [table.qualified],
  );
  return rows.map((r) => r.name);
}

/**
 * One batch: deletes up to `limit` rows of the leaf `leaf` that are older than `retainMs` (by the
 * created-at column) and from a transaction below `floorXid`. Returns how many went.
 */
export function deleteBatchSql(table: TableConfig, leaf: string, shard?: Shard): string {
  const created = quoteIdent(table.createdAt);
  // A shard deletes its own share (below the floor of every shard): shards prune side by side
  // instead of racing for the same rows.
  const share = shard ? `\n         AND (${shardFilter(table.columns.aggregateid, shard)})` : '';
  return `DELETE FROM ONLY ${leaf} WHERE ctid = ANY(ARRAY(
      SELECT ctid FROM ONLY ${leaf}
       WHERE ${created} < now() - make_interval(secs => $1::double precision / 1000)
         AND ${xminBelow('$2::bigint', tableFrozen('$4'))}${share}
       LIMIT $3))`;
}

/** Rows of `relation` (and the partitions below it) not below `$1` (the floor xid). */
export function unconfirmedCountSql(relation: string): string {
  return `SELECT count(*) AS n FROM ${relation} WHERE NOT ${xminBelow('$1::bigint')}`;
}
