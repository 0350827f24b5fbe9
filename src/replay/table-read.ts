import type pg from 'pg';
import { type Config, type TableConfig, quoteIdent } from '../config/config.js';
import { COLUMN_FIELDS } from '../config/schema.js';
import { ConfigError, UsageError } from '../errors.js';
import { type ColumnInfo, type OutboxMapper, type TableBinding, requireColumns } from '../outbox/mapper.js';
import { isDataException } from '../postgres/pg-errors.js';
import type { ReplayOptions } from './options.js';
import type { ReplayFilter, RowKey, TableProgress } from './resume-file.js';
import { type WhereCondition, whereSql } from './where.js';
import { shardFilter } from '../postgres/shard.js';

/**
 * What a replay reads from each table: the filter checked against the mapping, the time bounds as
 * Postgres reads them, the columns as the relay's stream describes them, and the SELECT (in the
 * cursor's order, after the resume point) with its row count.
 */

/** A table, with the filter's SQL for it. */
export interface TablePlan {
  readonly config: TableConfig;
  readonly index: number;
  /** schema.table, as the resume file and the summary name it. */
  readonly name: string;
  readonly where: { sql: string; params: string[] } | null;
  /** The real names of the columns the filter reads, checked against the table once connected. */
  readonly whereColumns: ReadonlySet<string>;
}

/** Checks the filter's columns against the config's mapping, before connecting. */
export function planTable(t: TableConfig, index: number, conditions: readonly WhereCondition[]): TablePlan {
  const name = `${t.schema}.${t.table}`;
  const mapped = new Map<string, string>();
  for (const f of COLUMN_FIELDS) mapped.set(f, t.columns[f]);
  mapped.set('created_at', t.createdAt);
  const columnNames = new Set(mapped.values());
  const whereColumns = new Set<string>();
  const resolve = (column: string): string => {
    // An outbox field name (`aggregatetype`) finds the table's column for it; a mapped column's own name works too.
    const real = mapped.get(column) ?? (columnNames.has(column) ? column : undefined);
    if (real === undefined) {
      throw new UsageError(`--where: "${column}" is not a mapped column of ${name}; use one of ${[...mapped.keys()].join(', ')}`);
    }
    whereColumns.add(real);
    return quoteIdent(real);
  };
  return { config: t, index, name, where: conditions.length === 0 ? null : whereSql(conditions, resolve, 1), whereColumns };
}

/** The --from/--to bounds as Postgres reads them; a bound it cannot read is a usage error. */
export async function resolveBounds(client: pg.Client, filter: ReplayFilter): Promise<{ from: string | null; to: string | null }> {
  const out = { from: null as string | null, to: null as string | null };
  for (const k of ['from', 'to'] as const) {
    const v = filter[k];
    if (v === null) continue;
    try {
      out[k] = (await client.query<{ t: string }>('SELECT $1::timestamptz::text AS t', [v])).rows[0]?.t ?? null;
    } catch (err) {
      if (isDataException(err))
        throw new UsageError(`--${k} ${JSON.stringify(v)} is not a time Postgres reads as timestamptz: ${(err as Error).message}`);
      throw err;
    }
  }
  return out;
}

/** A table ready to read: its binding, its SELECT and WHERE, and how many rows match. */
export interface TableRead {
  readonly plan: TablePlan;
  readonly mapper: OutboxMapper;
  readonly binding: TableBinding;
  readonly columns: readonly ColumnInfo[];
  /** SELECT list after the key columns, and the WHERE clause with its parameters. */
  readonly select: string;
  readonly where: string;
  readonly order: string;
  readonly params: unknown[];
  readonly count: number;
}

/** The row's key columns in front of its values: tableoid, ctid, created_at, created_at as Unix ms. */
export const KEY_COLUMNS = 4;

/** Checks a table against its mapping and the filter, and counts the rows the run will read. */
export async function prepareTable(
  client: pg.Client,
  cfg: Config,
  plan: TablePlan,
  resolved: { from: string | null; to: string | null },
  condition: ReplayOptions['condition'],
  mapper: OutboxMapper,
  resumeAt: TableProgress | null,
  rawBytes: boolean,
  version: number,
): Promise<TableRead> {
  const t = plan.config;
  const { columns, createdAtType } = await tableColumns(client, cfg.postgres.publication, t, version);
  if (columns.length === 0) {
    throw new ConfigError(`outbox.tables[${plan.index}].name`, `table ${plan.name} does not exist (or this user cannot see it)`);
  }
  const binding = mapper.bind(t, columns);
  requireColumns(binding, plan.index, plan.name);
  const names = new Set(columns.map((c) => c.name));
  const created = createdAtType === null ? null : quoteIdent(t.createdAt);
  if (created === null && (resolved.from !== null || resolved.to !== null)) {
    throw new UsageError(
      `--from/--to compare with column "${t.createdAt}", which table ${plan.name} does not have (outbox.tables[${plan.index}].columns.created_at); replay it with --where only`,
    );
  }
  const params: unknown[] = [];
  const param = (v: unknown) => {
    params.push(v);
    return `$${params.length}`;
  };
  const conds: string[] = [];
  if (resolved.from !== null) conds.push(`${created} >= ${param(resolved.from)}::timestamptz`);
  if (resolved.to !== null) conds.push(`${created} < ${param(resolved.to)}::timestamptz`);
  for (const col of plan.whereColumns) if (!names.has(col)) throw new UsageError(`--where: table ${plan.name} has no column "${col}"`);
  if (plan.where !== null) {
    const offset = params.length;
    conds.push(`(${plan.where.sql.replace(/\$(\d+)/g, (_, n: string) => `$${Number(n) + offset}`)})`);
    params.push(...plan.where.params);
  }
  if (condition) {
    const offset = params.length;
    conds.push(`(${condition.sql.replace(/\$(\d+)/g, (_, n: string) => `$${Number(n) + offset}`)})`);
    params.push(...condition.params);
  }
  // A shard reads its own rows only (as its publication does): a recovery or a replay of one shard
  // must not publish another's keys, out of their order and twice.
  if (cfg.postgres.shard) conds.push(`(${shardFilter(t.columns.aggregateid, cfg.postgres.shard)})`);
  if (resumeAt?.last) conds.push(afterKey(created, createdAtType, resumeAt.last, param));
  const where = conds.length > 0 ? ` WHERE ${conds.join(' AND ')}` : '';
  const value = (name: string) => (rawBytes ? `convert_to(${quoteIdent(name)}::text, 'SQL_ASCII')` : `${quoteIdent(name)}::text`);
  const keys =
    created === null
      ? 'tableoid::int8::text, ctid::text, NULL::text, NULL::text'
      : `tableoid::int8::text, ctid::text, ${created}::text, (extract(epoch FROM ${created}) * 1000)::int8::text`;
  // A column the mapping does not read is still selected: a dead letter carries the whole row.
  const select = `${keys}, ${columns.map((c) => value(c.name)).join(', ')}`;
  const order = created === null ? 'tableoid, ctid' : `${created}, tableoid, ctid`;
  const { rows } = await client.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${t.qualified}${where}`, params);
  return { plan, mapper, binding, columns, select, where, order, params, count: Number(rows[0]?.n ?? 0) };
}

/**
 * Rows after a resume key, in the cursor's order (created_at NULLs last, then tableoid, ctid).
 * The created_at key is cast to the column's own type, so it compares exactly as stored.
 */
function afterKey(created: string | null, type: string | null, at: RowKey, param: (v: unknown) => string): string {
  const rest = () => `(tableoid, ctid) > (${param(at.tableoid)}::oid, ${param(at.ctid)}::tid)`;
  if (created === null) return rest();
  if (at.createdAt === null) return `(${created} IS NULL AND ${rest()})`;
  const k = `${param(at.createdAt)}::${type}`;
  return `((${created}, tableoid, ctid) > (${k}, ${param(at.tableoid)}::oid, ${param(at.ctid)}::tid) OR ${created} IS NULL)`;
}

/**
 * The table's columns as the relay's stream describes them: not dropped, not generated (pgoutput
 * leaves generated columns out), and, from Postgres 15, only those the publication's column list
 * publishes. Also the created-at column's type, or null when the table has none.
 */
async function tableColumns(
  client: pg.Client,
  publication: string,
  t: TableConfig,
  version: number,
): Promise<{ columns: ColumnInfo[]; createdAtType: string | null }> {
  const { rows } = await client.query<{ name: string; type_oid: number; type_name: string }>(
    `SELECT a.attname AS name, a.atttypid::int AS type_oid, format_type(a.atttypid, a.atttypmod) AS type_name
       FROM pg_attribute a
      WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
      ORDER BY a.attnum`,
    [t.qualified],
  );
  let published: Set<string> | null = null;
  if (version >= 150000) {
    const pub = await client.query<{ attnames: string[] | null }>(
      // name[] has no parser in node-postgres: as text[] it arrives as an array.
      'SELECT attnames::text[] AS attnames FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3',
      [publication, t.schema, t.table],
    );
    const names = pub.rows[0]?.attnames;
    if (names) published = new Set(names);
  }
  const createdAt = rows.find((r) => r.name === t.createdAt);
  return {
    columns: rows.filter((r) => published === null || published.has(r.name)).map((r) => ({ name: r.name, typeOid: r.type_oid })),
    createdAtType: createdAt?.type_name ?? null,
  };
}
