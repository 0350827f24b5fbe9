import type pg from 'pg';
import type { Config, TableConfig } from '../config/config.js';
import { quoteIdent } from '../config/config.js';
import { ConfigError } from '../errors.js';
import { inheritanceChildren } from './prune-tables.js';
import { isShardFilter, shardFilter } from './shard.js';
import { serverVersion } from './sql.js';

/**
 * What an existing publication must do for outboxd to relay every outbox row: publish inserts,
 * send every row of each outbox table (no row filter the config does not imply) with every column
 * the mapping reads (no column list that leaves one out), and the table must have no inheritance
 * children (their rows arrive under the child's name). A publication that sends fewer rows is
 * worse than one that sends none: the rows it leaves out would count as confirmed, be skipped by
 * the watermark and deleted by pruning. So each is refused at start, naming the ALTER that fixes it.
 */
export async function checkPublishes(client: pg.Client, cfg: Config): Promise<void> {
  const pub = cfg.postgres.publication;
  const q = quoteIdent(pub);
  const { rows } = await client.query<{ pubinsert: boolean }>('SELECT pubinsert FROM pg_publication WHERE pubname = $1', [pub]);
  if (rows[0] && !rows[0].pubinsert) {
    throw new ConfigError(
      'postgres.publication',
      `publication ${pub} does not publish inserts, so no outbox row would ever be sent (yet each would count as confirmed and be pruned); run: ALTER PUBLICATION ${q} SET (publish = 'insert')`,
    );
  }
  const filters = (await serverVersion(client)) >= 150000;
  if (cfg.postgres.shard) await checkShardable(client, cfg);
  for (const [i, t] of cfg.outbox.tables.entries()) {
    const children = await inheritanceChildren(client, t);
    if (children.length > 0) {
      throw new ConfigError(
        `outbox.tables[${i}].name`,
        `table ${t.name} has inheritance children (${children.slice(0, 5).join(', ')}): their rows are published under each child's own name, which outboxd neither relays nor prunes; use a partitioned table (outboxd setup --partitioned --print) or list the children as outbox tables of their own`,
      );
    }
    if (filters) await checkRowsAndColumns(client, pub, t, i, cfg.postgres.shard);
  }
}

/**
 * postgres.shard needs row filters (PostgreSQL 15+) and a key column the filter can hash: text or
 * varchar (a cast to text is not allowed in a row filter). Named, before anything is created.
 */
export async function checkShardable(client: pg.Client, cfg: Config): Promise<void> {
  const shard = cfg.postgres.shard;
  if (!shard) return;
  const version = await serverVersion(client);
  if (version < 150000) {
    throw new ConfigError(
      'postgres.shard',
      `PostgreSQL ${Math.floor(version / 10000)} has no publication row filters, which shards need (each shard's publication keeps the rows whose key hashes to it): use PostgreSQL 15 or newer, or remove postgres.shard`,
    );
  }
  for (const [i, t] of cfg.outbox.tables.entries()) {
    const { rows } = await client.query<{ type: string }>(
      'SELECT a.atttypid::regtype::text AS type FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped',
      [t.qualified, t.columns.aggregateid],
    );
    const type = rows[0]?.type;
    if (type !== undefined && type !== 'text' && type !== 'character varying') {
      throw new ConfigError(
        `outbox.tables[${i}].columns.aggregateid`,
        `column ${t.columns.aggregateid} of table ${t.name} is ${type}: postgres.shard hashes the key in a publication row filter, which accepts only text or varchar keys (a cast is not allowed there); use a text key column`,
      );
    }
  }
}

/** PostgreSQL 15+: a row filter or a column list on the table, in this publication. */
async function checkRowsAndColumns(
  client: pg.Client,
  pub: string,
  t: TableConfig,
  i: number,
  shard: Config['postgres']['shard'],
): Promise<void> {
  const { rows } = await client.query<{ rowfilter: string | null; attnames: string[] | null }>(
    // name[] has no parser in node-postgres: as text[] it arrives as an array.
    'SELECT rowfilter, attnames::text[] AS attnames FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3',
    [pub, t.schema, t.table],
  );
  const r = rows[0];
  if (!r) return;
  const fix = `ALTER PUBLICATION ${quoteIdent(pub)} DROP TABLE ${t.qualified}; ALTER PUBLICATION ${quoteIdent(pub)} ADD TABLE ${t.qualified}${
    shard ? ` WHERE (${shardFilter(t.columns.aggregateid, shard)})` : ''
  }`;
  if (shard) {
    // A wrong filter loses the keys no shard takes, or sends a key through two shards.
    if (r.rowfilter === null || !isShardFilter(r.rowfilter, t.columns.aggregateid, shard)) {
      throw new ConfigError(
        `outbox.tables[${i}].name`,
        `publication ${pub} is shard ${shard.index} of ${shard.count} but its filter on table ${t.name} is ${r.rowfilter === null ? 'missing (it sends every row)' : `WHERE ${r.rowfilter}`}, not the shard's own: keys would be lost or sent by two shards; run: ${fix}`,
      );
    }
  } else if (r.rowfilter !== null) {
    throw new ConfigError(
      `outbox.tables[${i}].name`,
      `publication ${pub} filters the rows of table ${t.name} (WHERE ${r.rowfilter}): the rows it leaves out would never be sent, yet count as confirmed and be pruned; run: ${fix}`,
    );
  }
  if (r.attnames === null) return;
  const published = new Set(r.attnames);
  const { rows: cols } = await client.query<{ name: string }>(
    `SELECT attname::text AS name FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped AND attgenerated = ''`,
    [t.qualified],
  );
  const mapped = new Set([...Object.values(t.columns), t.createdAt]);
  const missing = cols.map((c) => c.name).filter((c) => mapped.has(c) && !published.has(c));
  if (missing.length > 0) {
    throw new ConfigError(
      `outbox.tables[${i}].name`,
      `publication ${pub} leaves column(s) ${missing.join(', ')} of table ${t.name} out (a column list), which the mapping reads: events would lose them; run: ${fix}`,
    );
  }
}
