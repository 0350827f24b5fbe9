import { isUtf8 } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { type Config, type SinkConfig, type TableConfig, quoteIdent } from '../config/config.js';
import { COLUMN_FIELDS, REQUIRED_COLUMN_FIELDS } from '../config/schema.js';
import { ConfigError, OutboxdError, PoisonError, type PoisonReason, UsageError } from '../errors.js';
import { letterFor } from '../sink/dead-letter.js';
import type { DeadLetter, OutboxMessage, Sink, TxnRef } from '../interfaces.js';
import { ZERO_LSN } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import { type Metrics, createMetrics } from '../observability/metrics.js';
import { setOwn } from '../own.js';
import { cloudEventsFor } from '../outbox/cloudevents.js';
import { type ColumnInfo, LSN_HEADER, OutboxMapper, type TableBinding, XID_HEADER } from '../outbox/mapper.js';
import { valuePoison } from '../pipeline/ingest.js';
import { Publisher } from '../pipeline/publisher.js';
import { destinationTemplate, loadSink } from '../sink/index.js';
import { maxMessageBytes } from '../sink/limits.js';
import { serverVersion } from '../postgres/sql.js';
import { connectAdmin } from '../source/connect.js';
import { classifyPgError } from '../postgres/pg-errors.js';
import { type ReplayFilter, type RowKey, type TableProgress, filterDifference, readCheckpoint, writeCheckpoint } from './checkpoint.js';
import { type WhereCondition, parseWhere, whereSql } from './where.js';

/**
 * Replay: publishes retained outbox rows again, through the configured sink and the relay's own
 * mapping, each message with its original id and an `outboxd-replay: <run id>` header.
 *
 * - Safe beside a running relay: an ordinary connection of its own, no replication slot, no
 *   leader lock, and never Kafka's transactional producer (that would fence the relay's
 *   exactly-once producer): a replay publishes at least once, and writes no Kafka checkpoint.
 * - The same bytes as the relay: every column is read as `col::text`, the text form pgoutput
 *   sends (the same output functions), and mapped by OutboxMapper from the same row shape.
 * - Ordered and bounded: one REPEATABLE READ READ ONLY transaction, a server-side cursor in
 *   (created_at, tableoid, ctid) order, one batch of `pipeline.batchMaxMessages` rows in memory.
 * - Resumable: after each confirmed batch the checkpoint file (if any) records the last row.
 */

/** The header that marks a replayed message, with the run's id as its value. */
export const REPLAY_HEADER = 'outboxd-replay';

export interface ReplayOptions {
  readonly cfg: Config;
  readonly log: Logger;
  /** The run's id, for the `outboxd-replay` header. Default: a fresh UUID; a resumed run keeps its checkpoint's. */
  readonly runId?: string;
  /**
   * A connected sink to publish through; the replay never closes it, and nothing else may publish
   * through it meanwhile (a sink's `publish` is never called concurrently). It must not be an
   * exactly-once (transactional) Kafka sink: that is refused. Default: the replay builds one from
   * the config (createReplaySink), connects it once, and closes it at the end.
   */
  readonly sink?: Sink;
  /** Rows created at or after this time (anything Postgres reads as timestamptz). */
  readonly from?: string;
  /** Rows created before this time (exclusive: windows [from, to) tile without overlap). */
  readonly to?: string;
  /** A `--where` filter (see where.ts); parsed, never pasted into SQL. */
  readonly where?: string;
  /**
   * A trusted condition built by code, ANDed in for every table, e.g. `age(xmin) <= $1`.
   * `$1..$n` refer to `params` and are renumbered, so `sql` must hold no other `$<digit>` text.
   * It is part of the filter a checkpoint must match.
   */
  readonly condition?: { readonly sql: string; readonly params: readonly unknown[] };
  /**
   * Read in this exported snapshot (SET TRANSACTION SNAPSHOT) instead of a fresh one: lost-slot
   * recovery reads exactly what its new slot's consistent point covers (source/slot-create.ts).
   */
  readonly snapshot?: string;
  /** Count per table and destination what would be published; publish nothing, connect no broker. */
  readonly dryRun?: boolean;
  /** Resume from and record progress in this file (see checkpoint.ts). Never written by a dry run. */
  readonly checkpointFile?: string;
  /** Once the rows are counted, before the first is published. */
  readonly onStart?: (start: ReplayStart) => void;
  /** After every confirmed batch. */
  readonly onProgress?: (progress: ReplayProgress) => void;
  /** Aborted: stop after the batch in progress is confirmed (and checkpointed). */
  readonly signal?: AbortSignal;
  /** Where publish latency and errors are counted (the relay's own, during recovery). */
  readonly metrics?: Metrics;
}

export interface ReplayStart {
  readonly runId: string;
  /** A checkpoint was found and the run resumes after it. */
  readonly resumed: boolean;
  /** The time bounds as Postgres read them (timestamptz text), or null. */
  readonly from: string | null;
  readonly to: string | null;
  /** Rows to read in this run, over all tables (counted in the replay's snapshot). */
  readonly total: number;
  /** Rows an earlier run of the same checkpoint already handled. */
  readonly skipped: number;
}

export interface ReplayCounts {
  /** Rows read from the tables in this run. */
  read: number;
  /** Messages the broker confirmed (dry run: that would be published). */
  published: number;
  /** Poison rows: dead-lettered, the one that halted the run, or (dry run) found. */
  poison: number;
  /** Poison rows the dead-letter destination confirmed. */
  deadLettered: number;
  /** Rows an earlier run of the same checkpoint already handled, not read again. */
  skipped: number;
}

export interface ReplayProgress extends Readonly<ReplayCounts> {
  readonly table: string;
  /** Rows to read in this run, over all tables. */
  readonly total: number;
}

export interface ReplaySummary extends Readonly<ReplayCounts> {
  readonly runId: string;
  /** `done`: every row handled; `interrupted`: the signal stopped it; `halted`: a poison row under `halt`. */
  readonly outcome: 'done' | 'interrupted' | 'halted';
  readonly resumed: boolean;
  readonly dryRun: boolean;
  readonly elapsedMs: number;
  /** Messages by table and destination: published, or (dry run) that would be. Bounded; the rest under `(other)`. */
  readonly destinations: ReadonlyArray<{ readonly table: string; readonly destination: string; readonly messages: number }>;
  /** The first poison row: under `halt` the one that stopped the run. */
  readonly firstPoison: {
    readonly table: string;
    readonly id: string | null;
    readonly reason: PoisonReason;
    readonly message: string;
  } | null;
}

/** The cursor's name; one replay runs one cursor at a time on its own connection. */
const CURSOR = 'outboxd_replay';
/** Distinct (table, destination) pairs the summary counts apart. */
const MAX_DESTINATIONS = 1_000;

/**
 * The config's sink as a replay uses it: Kafka always at least once (an idempotent producer, no
 * transactional id, so a running exactly-once relay is never fenced) and on the main thread.
 */
function replaySinkConfig(sink: SinkConfig): SinkConfig {
  if (sink.type !== 'kafka') return sink;
  return { ...sink, kafka: { ...sink.kafka, delivery: 'at-least-once', workers: 0 } };
}

/** Builds (does not connect) the sink a replay publishes through, from the config. */
async function createReplaySink(cfg: Config, log: Logger): Promise<Sink> {
  const factory = await loadSink(replaySinkConfig(cfg.sink), cfg.postgres.slot, cfg.outbox.onPoison === 'dead-letter', log);
  return factory({
    connection: () => undefined,
    blocked: (on) => {
      if (on) log.warn('the broker blocked publishing (resource alarm); waiting');
    },
    transaction: () => undefined,
    fenced: () => undefined,
  });
}

/** A table, with the filter's SQL for it. */
interface TablePlan {
  readonly config: TableConfig;
  readonly index: number;
  /** schema.table, as the checkpoint and the summary name it. */
  readonly name: string;
  readonly where: { sql: string; params: string[] } | null;
  /** The real names of the columns the filter reads, checked against the table once connected. */
  readonly whereColumns: ReadonlySet<string>;
}

/** Replays the rows the options select. Resolves with the summary; rejects with a one-line OutboxdError. */
export async function replayRows(opts: ReplayOptions): Promise<ReplaySummary> {
  const startedAt = performance.now();
  const { cfg } = opts;
  const log = opts.log.child({ module: 'replay' });
  const dryRun = opts.dryRun ?? false;
  if (opts.sink?.readCheckpoint) {
    throw new OutboxdError('INTERNAL', 'replay must not publish through the exactly-once (transactional) sink: it would fence the relay');
  }
  // Everything the command line can get wrong is found before any connection is made.
  const conditions = opts.where === undefined ? [] : parseWhere(opts.where);
  const plans = cfg.outbox.tables.map((t, index) => planTable(t, index, conditions));
  const filter: ReplayFilter = {
    from: opts.from ?? null,
    to: opts.to ?? null,
    where: opts.where ?? null,
    condition: opts.condition ? JSON.stringify(opts.condition) : null,
  };
  const file = opts.checkpointFile;
  const previous = file === undefined ? null : readCheckpoint(file);
  if (previous && file !== undefined) {
    const diff = filterDifference(filter, previous.filter);
    if (diff !== null) throw new UsageError(`--checkpoint ${file} belongs to a replay with another filter: ${diff}; use another file`);
  }
  const runId = previous?.runId ?? opts.runId ?? randomUUID();
  const counts: ReplayCounts = { read: 0, published: 0, poison: 0, deadLettered: 0, skipped: 0 };
  const progress: Record<string, TableProgress> = { ...(previous?.tables ?? {}) };
  for (const p of Object.values(progress)) counts.skipped += p.rows;

  const client = await connectAdmin(cfg.postgres);
  let sink: Sink | null = opts.sink ?? null;
  const ownSink = sink === null;
  try {
    await client.query(`SET application_name = 'outboxd-replay'`);
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    if (opts.snapshot !== undefined) await client.query(`SET TRANSACTION SNAPSHOT ${pg.escapeLiteral(opts.snapshot)}`);
    // A cursor's first FETCH may sort millions of rows: longer than the admin connection's bound.
    await client.query('SET LOCAL statement_timeout = 0');
    const resolved = previous?.resolved ?? (await resolveBounds(client, filter));
    const rawBytes = (await client.query<{ e: string }>('SELECT current_setting($1) AS e', ['server_encoding'])).rows[0]?.e === 'SQL_ASCII';
    const version = await serverVersion(client);
    const reads: TableRead[] = [];
    // One mapping for every table, as the relay has.
    const mapper = new OutboxMapper(destinationTemplate(cfg.sink), cloudEventsFor(cfg.sink));
    let total = 0;
    for (const plan of plans) {
      const at = progress[plan.name];
      if (at?.done) continue;
      const read = await prepareTable(client, cfg, plan, resolved, opts.condition, mapper, at ?? null, rawBytes, version);
      total += read.count;
      reads.push(read);
    }
    if (!dryRun && sink === null) {
      sink = await createReplaySink(cfg, opts.log.child({ module: 'sink' }));
      await sink.connect();
    }
    opts.onStart?.({ runId, resumed: previous !== null, from: resolved.from, to: resolved.to, total, skipped: counts.skipped });
    log.info({ runId, resumed: previous !== null, total, dryRun }, 'replay starting');

    const run = new ReplayRun(cfg, log, runId, sink, dryRun, counts, opts.metrics, total, opts.onProgress);
    const save = (): void => {
      if (file === undefined || dryRun) return;
      writeCheckpoint(file, { version: 1, runId, filter, resolved, tables: progress, updatedAt: new Date().toISOString() });
    };
    let outcome: ReplaySummary['outcome'] = 'done';
    for (const read of reads) {
      const name = read.plan.name;
      const before = progress[name]?.rows ?? 0;
      const last = progress[name]?.last ?? null;
      const end = await run.table(client, read, opts.signal, (key, rows, done) => {
        progress[name] = { last: key ?? last, rows: before + rows, done };
        save();
      });
      if (end !== 'done') {
        outcome = end;
        break;
      }
    }
    await client.query('COMMIT');
    const summary: ReplaySummary = {
      runId,
      outcome,
      resumed: previous !== null,
      dryRun,
      elapsedMs: Math.round(performance.now() - startedAt),
      ...counts,
      destinations: run.destinations(),
      firstPoison: run.firstPoison,
    };
    log.info({ ...summary, destinations: summary.destinations.length }, 'replay finished');
    return summary;
  } catch (err) {
    if (err instanceof OutboxdError) throw err;
    throw classifyPgError(err, 'replaying');
  } finally {
    await client.end().catch(() => undefined);
    if (ownSink && sink) await sink.close().catch(() => undefined);
  }
}

/** Checks the filter's columns against the config's mapping, before connecting. */
function planTable(t: TableConfig, index: number, conditions: readonly WhereCondition[]): TablePlan {
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
async function resolveBounds(client: pg.Client, filter: ReplayFilter): Promise<{ from: string | null; to: string | null }> {
  const out = { from: null as string | null, to: null as string | null };
  for (const k of ['from', 'to'] as const) {
    const v = filter[k];
    if (v === null) continue;
    try {
      out[k] = (await client.query<{ t: string }>('SELECT $1::timestamptz::text AS t', [v])).rows[0]?.t ?? null;
    } catch (err) {
      const e = err as { code?: string; message?: string };
      if (e.code?.startsWith('22'))
        throw new UsageError(`--${k} ${JSON.stringify(v)} is not a time Postgres reads as timestamptz: ${e.message}`);
      throw err;
    }
  }
  return out;
}

/** A table ready to read: its binding, its SELECT and WHERE, and how many rows match. */
interface TableRead {
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
const KEY_COLUMNS = 4;

async function prepareTable(
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
  for (const field of REQUIRED_COLUMN_FIELDS) {
    if (binding.at[field] === columns.length) {
      throw new ConfigError(`outbox.tables[${plan.index}].columns.${field}`, `table ${plan.name} has no column "${t.columns[field]}"`);
    }
  }
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

/** A message on its way, with the key of the row it came from. */
interface Pending {
  readonly message: OutboxMessage;
  readonly key: RowKey;
}

/** One replay's publishing and counting, table after table. */
class ReplayRun {
  private readonly publisher: Publisher | null;
  private readonly byDestination = new Map<string, number>();
  firstPoison: ReplaySummary['firstPoison'] = null;
  private readonly policy: Config['outbox']['onPoison'];
  private readonly maxValueBytes: number;

  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    private readonly runId: string,
    private readonly sink: Sink | null,
    private readonly dryRun: boolean,
    private readonly counts: ReplayCounts,
    metrics: Metrics | undefined,
    private readonly total: number,
    private readonly onProgress: ReplayOptions['onProgress'],
  ) {
    this.policy = cfg.outbox.onPoison;
    this.maxValueBytes = maxMessageBytes(cfg);
    this.publisher =
      sink === null || dryRun
        ? null
        : new Publisher(
            sink,
            cfg.pipeline.retry,
            cfg.sink.stallTimeoutMs,
            {
              onSinkHealth: () => undefined,
              onStall: (stalled, waitedMs) => {
                if (stalled) log.warn({ waitedMs }, 'the broker has not confirmed for longer than sink.stallTimeout');
              },
            },
            metrics ?? createMetrics(),
            log,
            // Never aborted: a stop waits for the batch in progress to be confirmed.
            new AbortController().signal,
          );
  }

  /**
   * Reads one table through the cursor and publishes it batch by batch. `confirmed` is called
   * after every confirmed batch with the last row's key and the rows handled so far.
   */
  async table(
    client: pg.Client,
    read: TableRead,
    signal: AbortSignal | undefined,
    confirmed: (key: RowKey | null, rows: number, done: boolean) => void,
  ): Promise<ReplaySummary['outcome']> {
    const batch = this.cfg.pipeline.batchMaxMessages;
    const { plan } = read;
    await client.query(
      `DECLARE ${CURSOR} NO SCROLL CURSOR FOR SELECT ${read.select} FROM ${plan.config.qualified}${read.where} ORDER BY ${read.order}`,
      read.params,
    );
    let rows = 0;
    let last: RowKey | null = null;
    try {
      for (;;) {
        if (signal?.aborted) return 'interrupted';
        const page = await client.query<unknown[]>({ text: `FETCH FORWARD ${batch} FROM ${CURSOR}`, rowMode: 'array' });
        const { handled, key, halted } = await this.page(read, page.rows);
        rows += handled;
        if (key !== null) last = key;
        const done = !halted && page.rows.length < batch;
        confirmed(last, rows, done);
        this.onProgress?.({ table: plan.name, total: this.total, ...this.counts });
        if (halted) return 'halted';
        if (done) return 'done';
      }
    } finally {
      await client.query(`CLOSE ${CURSOR}`).catch(() => undefined);
    }
  }

  /** Maps and publishes one page; returns the rows handled, the last handled row's key, and whether a poison row halted it. */
  private async page(read: TableRead, rows: readonly unknown[][]): Promise<{ handled: number; key: RowKey | null; halted: boolean }> {
    const pending: Pending[] = [];
    let pendingBytes = 0;
    let handled = 0;
    let key: RowKey | null = null;
    /** Publishes what is pending; false when a poison row halted the run. */
    const flush = async (): Promise<boolean> => {
      if (pending.length === 0) return true;
      const done = await this.publish(read.plan.name, pending.splice(0));
      pendingBytes = 0;
      handled += done.handled;
      if (done.key !== null) key = done.key;
      return !done.halted;
    };
    for (const row of rows) {
      this.counts.read++;
      const rowKey: RowKey = { tableoid: row[0] as string, ctid: row[1] as string, createdAt: (row[2] as string | null) ?? null };
      const mapped = this.map(read, row);
      if (mapped instanceof PoisonError || 'error' in mapped) {
        const letter = mapped instanceof PoisonError ? this.rowLetter(read, row, mapped) : mapped;
        if (!(await flush())) return { handled, key, halted: true };
        if (!(await this.poison(read.plan.name, letter))) return { handled, key, halted: true };
        handled++;
        key = rowKey;
        continue;
      }
      if (this.dryRun) {
        this.counts.published++;
        this.count(read.plan.name, mapped.destination);
        handled++;
        key = rowKey;
        continue;
      }
      pending.push({ message: mapped, key: rowKey });
      pendingBytes += mapped.sizeBytes;
      if (pendingBytes >= this.cfg.pipeline.batchMaxBytes && !(await flush())) return { handled, key, halted: true };
    }
    const ok = await flush();
    return { handled, key, halted: !ok };
  }

  /** The row as the relay would publish it, or why it is poison (a dead letter when the sink refused it). */
  private map(read: TableRead, row: readonly unknown[]): OutboxMessage | PoisonError | DeadLetter {
    const values: Array<string | null> = new Array(read.columns.length);
    for (let i = 0; i < read.columns.length; i++) {
      const v = row[KEY_COLUMNS + i] as string | Buffer | null;
      const problem = this.valueProblem(read.columns[i]?.name as string, v);
      if (problem) return problem;
      values[i] = v === null ? null : typeof v === 'string' ? v : v.toString('utf8');
    }
    const ms = row[3] === null ? Date.now() : Number(row[3]);
    // No commit LSN or transaction id is known for a row read from the table: those headers are left out.
    const txn = noPosition(ms);
    let m: OutboxMessage;
    try {
      m = this.replayed(read.mapper.fromRow(read.binding, values, txn));
    } catch (err) {
      if (err instanceof PoisonError) return err;
      throw err;
    }
    const refused = this.sink?.check(m) ?? null;
    return refused === null ? m : letterFor(m, refused);
  }

  /** The same limits the relay's decoder applies to a value it reads: the sink's size, and UTF-8. */
  private valueProblem(column: string, v: string | Buffer | null): PoisonError | null {
    if (v === null) return null;
    const bytes = typeof v === 'string' ? (v.length * 3 <= this.maxValueBytes ? 0 : Buffer.byteLength(v)) : v.length;
    if (bytes > this.maxValueBytes) return valuePoison('oversized', column, bytes, this.maxValueBytes);
    if (typeof v !== 'string' && !isUtf8(v)) return valuePoison('bad_encoding', column, v.length, this.maxValueBytes);
    return null;
  }

  /** The mapper's message as a replay sends it: the source-position headers out, the replay header in. */
  private replayed(m: OutboxMessage): OutboxMessage {
    const headers: Record<string, string> = {};
    for (const k in m.headers) if (k !== LSN_HEADER && k !== XID_HEADER) setOwn(headers, k, m.headers[k] as string);
    headers[REPLAY_HEADER] = this.runId;
    const sizeBytes = m.sizeBytes - LSN_HEADER.length - XID_HEADER.length + REPLAY_HEADER.length + this.runId.length;
    return { ...m, headers, sizeBytes };
  }

  /** A row that could not be mapped, as its dead letter: the whole row as JSON, as the relay sends it. */
  private rowLetter(read: TableRead, row: readonly unknown[], error: PoisonError): DeadLetter {
    const whole: Record<string, string | null> = {};
    read.columns.forEach((c, i) => {
      const v = row[KEY_COLUMNS + i] as string | Buffer | null;
      setOwn(whole, c.name, v === null || (typeof v !== 'string' && !isUtf8(v)) ? null : v.toString());
    });
    const at = read.binding.at;
    const text = (i: number) => {
      const v = row[KEY_COLUMNS + i] as string | Buffer | null | undefined;
      return v === null || v === undefined ? null : v.toString();
    };
    const id = error.subject?.id ?? text(at.id);
    return {
      index: 0,
      id,
      key: error.subject?.key ?? text(at.aggregateid),
      destination: null,
      payload: JSON.stringify(whole),
      contentType: 'application/json',
      headers: id ? { id, [REPLAY_HEADER]: this.runId } : { [REPLAY_HEADER]: this.runId },
      error,
      txn: noPosition(Date.now()),
    };
  }

  /** Publishes a batch; broker-refused messages follow the poison policy, in order. */
  private async publish(table: string, batch: Pending[]): Promise<{ handled: number; key: RowKey | null; halted: boolean }> {
    const outcome = await (this.publisher as Publisher).publish(batch.map((p) => p.message));
    const refused = new Map(outcome.poisoned.map((p) => [p.index, p.error]));
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i] as Pending;
      const error = refused.get(i);
      if (error === undefined) {
        this.counts.published++;
        this.count(table, p.message.destination);
        continue;
      }
      if (!(await this.poison(table, letterFor(p.message, error)))) {
        // Halted: the checkpoint stays before this row, so a rerun starts with it (and publishes
        // again what followed it in this batch: at least once).
        return { handled: i, key: i === 0 ? null : (batch[i - 1] as Pending).key, halted: true };
      }
    }
    return { handled: batch.length, key: (batch.at(-1) as Pending).key, halted: false };
  }

  /** Applies the poison policy. Returns false when the run must halt. */
  private async poison(table: string, letter: DeadLetter): Promise<boolean> {
    this.counts.poison++;
    this.firstPoison ??= { table, id: letter.id, reason: letter.error.reason, message: letter.error.message };
    if (this.dryRun) return true;
    if (this.policy === 'halt') {
      this.log.error(
        { id: letter.id, key: letter.key, reason: letter.error.reason, err: letter.error },
        'poison row: replay halts (outbox.onPoison is halt)',
      );
      return false;
    }
    await (this.publisher as Publisher).deadLetter(letter);
    this.counts.deadLettered++;
    this.log.warn({ id: letter.id, key: letter.key, reason: letter.error.reason, error: letter.error.message }, 'poison row dead-lettered');
    return true;
  }

  private count(table: string, destination: string): void {
    let k = `${table}\u0000${destination}`;
    if (!this.byDestination.has(k) && this.byDestination.size >= MAX_DESTINATIONS) k = `${table}\u0000(other)`;
    this.byDestination.set(k, (this.byDestination.get(k) ?? 0) + 1);
  }

  destinations(): ReplaySummary['destinations'] {
    return [...this.byDestination].map(([k, messages]) => {
      const [table, destination] = k.split('\u0000') as [string, string];
      return { table, destination, messages };
    });
  }
}

/** The position of a row read from the table: none is known (no LSN, no xid), only a time. */
function noPosition(commitTimeMs: number): TxnRef {
  return { xid: 0, commitLsn: ZERO_LSN, commitTimeMs, lsnText: '', xidText: '' };
}
