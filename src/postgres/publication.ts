import type pg from 'pg';
import { type Config, type TableConfig, quoteIdent } from '../config/config.js';
import { ConfigError, OutboxdError } from '../errors.js';
import { alreadyExists, classifyPgError } from './pg-errors.js';
import { checkPublishes, checkShardable } from './publication-checks.js';
import { shardFilter } from './shard.js';

/** The server's logical decoding setting and the publication of the outbox tables. */

export async function checkWalLevel(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ wal_level: string }>('SHOW wal_level');
  const level = rows[0]?.wal_level;
  if (level !== 'logical') {
    throw new OutboxdError(
      'PG_NOT_LOGICAL',
      `Postgres wal_level is "${level}", logical replication needs "logical": set wal_level = logical and restart Postgres`,
    );
  }
}

/**
 * Makes sure the publication exists and covers every outbox table. Creates it when missing and
 * allowed. An existing publication that lacks a table, or sends only some of its rows or columns
 * (publication-checks.ts), is a config error, never altered silently.
 */
export async function ensurePublication(client: pg.Client, cfg: Config): Promise<'created' | 'exists'> {
  const pub = cfg.postgres.publication;
  const { rows } = await client.query<{ puballtables: boolean; pubviaroot: boolean }>(
    'SELECT puballtables, pubviaroot FROM pg_publication WHERE pubname = $1',
    [pub],
  );
  const tables = cfg.outbox.tables;
  if (rows.length === 0) {
    if (!cfg.postgres.createPublication) {
      throw new ConfigError(
        'postgres.publication',
        `publication ${pub} does not exist and postgres.createPublication is false; create it: CREATE PUBLICATION ${quoteIdent(pub)} FOR TABLE ${tables.map((t) => t.qualified).join(', ') || '...'}`,
      );
    }
    for (const t of tables) await checkTableExists(client, t);
    await checkShardable(client, cfg);
    const list = publicationTables(cfg);
    try {
      // Inserts only: publishing updates and deletes would make Postgres reject UPDATE and DELETE
      // on an outbox table without a replica identity, breaking cleanup jobs.
      // Via the partition root: a partitioned outbox's rows arrive under its own name, so its
      // mapping and destination apply (without it they would carry each partition's name).
      await client.query(`CREATE PUBLICATION ${quoteIdent(pub)}${list} WITH (publish = 'insert', publish_via_partition_root = true)`);
    } catch (err) {
      if (!alreadyExists(err)) throw classifyPgError(err, `creating publication ${pub}`);
    }
    await checkPublishes(client, cfg);
    return 'created';
  }
  if (rows[0]?.puballtables && cfg.postgres.shard) {
    throw new ConfigError(
      'postgres.publication',
      `publication ${pub} is FOR ALL TABLES, which has no row filter: as shard ${cfg.postgres.shard.index} of ${cfg.postgres.shard.count} it would send every key; drop it, and let outboxd setup create the shard's publication`,
    );
  }
  if (!rows[0]?.pubviaroot) {
    for (const [i, t] of tables.entries()) {
      if (await isPartitioned(client, t)) {
        throw new ConfigError(
          `outbox.tables[${i}].name`,
          `table ${t.schema}.${t.table} is partitioned and publication ${pub} publishes its rows under each partition's name, which outboxd would not relay; run: ALTER PUBLICATION ${quoteIdent(pub)} SET (publish_via_partition_root = true)`,
        );
      }
    }
  }
  await checkPublishes(client, cfg);
  if (rows[0]?.puballtables) return 'exists';
  const covered = await client.query<{ schemaname: string; tablename: string }>(
    'SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1',
    [pub],
  );
  const have = new Set(covered.rows.map((r) => `${r.schemaname}.${r.tablename}`));
  tables.forEach((t, i) => {
    if (!have.has(`${t.schema}.${t.table}`)) {
      throw new ConfigError(
        `outbox.tables[${i}].name`,
        `table ${t.schema}.${t.table} is not in publication ${pub}; run: ALTER PUBLICATION ${quoteIdent(pub)} ADD TABLE ${t.qualified}`,
      );
    }
  });
  return 'exists';
}

/**
 * The FOR TABLE clause of the publication: FOR TABLE (not ALL TABLES), so only outbox rows are
 * decoded and sent; each table with its shard's row filter when sharded. An outbox driven purely by
 * logical messages still needs a publication to start replication, so it may be empty.
 */
export function publicationTables(cfg: Config): string {
  const shard = cfg.postgres.shard;
  const entries = cfg.outbox.tables.map((t) =>
    shard ? `${t.qualified} WHERE (${shardFilter(t.columns.aggregateid, shard)})` : t.qualified,
  );
  return entries.length > 0 ? ` FOR TABLE ${entries.join(', ')}` : '';
}

/** The table is partitioned (relkind p). */
export async function isPartitioned(client: pg.Client, t: TableConfig): Promise<boolean> {
  const { rows } = await client.query(
    `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'p'`,
    [t.schema, t.table],
  );
  return rows.length > 0;
}

async function checkTableExists(client: pg.Client, t: TableConfig): Promise<void> {
  const { rows } = await client.query('SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = $2', [t.schema, t.table]);
  if (rows.length === 0) {
    throw new ConfigError('outbox.tables', `table ${t.schema}.${t.table} does not exist (create the outbox table first)`);
  }
}
