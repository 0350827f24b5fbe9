import type pg from 'pg';
import type { Config, TableConfig } from '../config/config.js';
import { quoteIdent } from '../config/config.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { isPartitioned } from './publication.js';
import { bounded, unconfirmedCountSql } from './prune-tables.js';

/**
 * Partition mode (`outbox.prune.mode: partitions`, docs/adr/0011): daily partitions (UTC) by the
 * created-at column, created `premake` days ahead, and an old one dropped whole once its upper
 * bound is older than `retain` and none of its rows (in any partition below it) is from a
 * transaction at or after the prune floor.
 */

export interface Partition {
  qualified: string;
  isDefault: boolean;
  /** Range bounds in ms, when they are timestamps (MINVALUE/MAXVALUE: null). */
  from: number | null;
  to: number | null;
}

const DAY_MS = 86_400_000;

export class PartitionKeeper {
  constructor(
    private readonly cfg: Config,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /** Creates the partitions ahead of time. Returns the table's partitions, or null when it is not partitioned. */
  async premake(client: pg.Client, table: TableConfig): Promise<Partition[] | null> {
    const parts = await partitionsOf(client, table);
    if (parts === null) {
      this.log.warn(
        { table: table.qualified },
        'prune.mode is partitions but the table is not partitioned; nothing is pruned (see outboxd setup --partitioned)',
      );
      return null;
    }
    const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
    for (let d = 0; d <= this.cfg.outbox.prune.premake; d++) {
      const from = today + d * DAY_MS;
      if (parts.some((p) => p.from !== null && p.to !== null && p.from <= from && from < p.to)) continue;
      await this.create(client, table, from);
    }
    return parts;
  }

  /** True when the partition's upper bound is older than `retain`: it may go once confirmed. */
  expired(part: Partition): boolean {
    return !part.isDefault && part.to !== null && part.to <= Date.now() - this.cfg.outbox.prune.retainMs;
  }

  private async create(client: pg.Client, table: TableConfig, fromMs: number): Promise<void> {
    const name = partitionName(table, fromMs);
    const from = new Date(fromMs).toISOString();
    const to = new Date(fromMs + DAY_MS).toISOString();
    // CREATE … LIKE, then ATTACH: the parent is locked SHARE UPDATE EXCLUSIVE (writers go on),
    // where CREATE TABLE … PARTITION OF would lock it ACCESS EXCLUSIVE.
    let done: true | null;
    try {
      done = await bounded(client, this.cfg.outbox.prune.lockTimeoutMs, async (c) => {
        await c.query(`CREATE TABLE IF NOT EXISTS ${name} (LIKE ${table.qualified} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`);
        await c.query(`ALTER TABLE ${table.qualified} ATTACH PARTITION ${name} FOR VALUES FROM ('${from}') TO ('${to}')`);
        return true as const;
      });
    } catch (err) {
      // E.g. the default partition already holds rows of that day (23514): they stay there and
      // are pruned row by row; the day's writes keep going to the default partition.
      this.log.warn({ err, table: table.qualified, partition: name }, 'cannot create an outbox partition ahead of time');
      return;
    }
    if (done === null) {
      this.metrics.pruneSkipped.inc({ reason: 'lock_timeout' });
      this.log.warn({ table: table.qualified, partition: name }, 'creating a partition waited past prune.lockTimeout; retrying next round');
      return;
    }
    this.metrics.partitionsCreated.inc({ table: table.name });
    this.log.info({ table: table.qualified, partition: name, from, to }, 'created outbox partition');
  }

  /** Drops an expired partition whose every row is below `floorXid`. */
  async drop(client: pg.Client, table: TableConfig, part: Partition, floorXid: bigint): Promise<void> {
    // Under the partition's own lock (writers of other days go on), no transaction can add to it;
    // then only rows below the floor, all confirmed, may remain. The parent is locked only for
    // the DETACH and DROP, bounded by prune.lockTimeout.
    const outcome = await bounded(client, this.cfg.outbox.prune.lockTimeoutMs, async (c) => {
      await c.query(`LOCK TABLE ${part.qualified} IN ACCESS EXCLUSIVE MODE`);
      const { rows } = await c.query<{ n: string }>(unconfirmedCountSql(part.qualified), [floorXid.toString()]);
      if (Number(rows[0]?.n ?? 0) > 0) return 'unconfirmed' as const;
      await c.query(`ALTER TABLE ${table.qualified} DETACH PARTITION ${part.qualified}`);
      await c.query(`DROP TABLE ${part.qualified}`);
      return 'dropped' as const;
    });
    if (outcome === null) {
      this.metrics.pruneSkipped.inc({ reason: 'lock_timeout' });
      this.log.info({ partition: part.qualified }, 'dropping a partition waited past prune.lockTimeout; retrying next round');
    } else if (outcome === 'unconfirmed') {
      this.log.info({ partition: part.qualified }, 'partition holds rows newer than the prune floor; it is dropped in a later round');
    } else {
      this.metrics.partitionsDropped.inc({ table: table.name });
      this.log.info({ table: table.qualified, partition: part.qualified }, 'dropped a confirmed outbox partition');
    }
  }
}

/** The table's direct partitions and their bounds, or null when it is not partitioned. */
async function partitionsOf(client: pg.Client, table: TableConfig): Promise<Partition[] | null> {
  if (!(await isPartitioned(client, table))) return null;
  const { rows } = await client.query<{ schema: string; name: string; bound: string }>(
    `SELECT n.nspname AS schema, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
       FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE i.inhparent = $1::regclass`,
    [table.qualified],
  );
  return rows.map((r) => {
    const m = /FROM \('([^']+)'\) TO \('([^']+)'\)/.exec(r.bound);
    const time = (s: string | undefined) => {
      const t = s === undefined ? Number.NaN : Date.parse(s.replace(' ', 'T').replace(/([+-]\d\d)$/, '$1:00'));
      return Number.isNaN(t) ? null : t;
    };
    return {
      qualified: `${quoteIdent(r.schema)}.${quoteIdent(r.name)}`,
      isDefault: r.bound === 'DEFAULT',
      from: time(m?.[1]),
      to: time(m?.[2]),
    };
  });
}

/** `<schema>.<table>_pYYYYMMDD`, the daily partition that starts at `fromMs`. */
export function partitionName(table: TableConfig, fromMs: number): string {
  const day = new Date(fromMs).toISOString().slice(0, 10).replace(/-/g, '');
  return `${quoteIdent(table.schema)}.${quoteIdent(`${table.table}_p${day}`)}`;
}
