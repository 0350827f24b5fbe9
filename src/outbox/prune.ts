import type pg from 'pg';
import type { Config, TableConfig } from '../config/config.js';
import { quoteIdent } from '../config/config.js';
import { type Lsn, formatLsn, parseLsn } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { connectAdmin } from '../source/connect.js';
import { isPartitioned } from '../source/publication.js';
import { recordConfirmedXid } from '../source/slot.js';

/**
 * PRUNING, AND THE CONFIRMED EPOCH (docs/adr/0011). Deletes outbox rows that the broker has
 * confirmed and that are older than `outbox.prune.retain`, and nothing else.
 *
 * A row does not carry its commit LSN, so "confirmed" is decided by epochs:
 * 1. An epoch starts: X0 = the xmin of a fresh snapshot (every transaction below it has ended),
 *    then, in a later statement, W0 = the WAL insert position. A committed transaction below X0
 *    wrote its commit record before the snapshot, so before W0.
 * 2. When the watermark (the relay's confirmed position) reaches W0, every outbox transaction
 *    below X0 is confirmed (or settled as poison).
 * 3. X0 goes into the lost-slot marker first (lost-slot recovery publishes again the rows at or
 *    after it), then the rows below X0 and older than `retain` are deleted in batches, or whole
 *    partitions of them dropped.
 * 4. The next epoch starts.
 *
 * Runs on the leader only, on its own connection. Every statement that takes a lock is bounded by
 * `prune.lockTimeout`; a round that waits longer gives up and the next tries again. With
 * `prune.mode: off` and `postgres.onLostSlot: recover-from-outbox`, only steps 1–3's marker run.
 */
export class Pruner {
  private timer: NodeJS.Timeout | null = null;
  private client: pg.Client | null = null;
  private epoch: Epoch | null = null;
  private running: Promise<void> | null = null;
  private stopped = true;

  constructor(
    private readonly cfg: Config,
    /** The confirmed position (the watermark's `lsn`). */
    private readonly confirmed: () => Lsn,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  /** Pruning or the marker are configured at all. */
  static wanted(cfg: Config): boolean {
    return cfg.outbox.prune.mode !== 'off' || cfg.postgres.onLostSlot === 'recover-from-outbox';
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.timer = setInterval(() => this.tick(), this.cfg.outbox.prune.intervalMs);
    this.timer.unref();
    this.tick();
  }

  /** Stops after the statement in progress; a new leadership starts a new epoch. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
    this.epoch = null;
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  private tick(): void {
    if (this.running || this.stopped) return;
    this.running = this.round()
      .catch((err: unknown) => {
        this.log.warn({ err }, 'pruning round failed; the next round tries again');
        const c = this.client;
        this.client = null;
        void c?.end().catch(() => undefined);
      })
      .finally(() => {
        this.running = null;
      });
  }

  /** One round (exported for tests through `runOnce`): start an epoch, or finish one and start the next. */
  async round(): Promise<void> {
    const client = await this.connection();
    if (this.epoch === null) {
      this.epoch = await startEpoch(client);
      return;
    }
    const confirmed = this.confirmed();
    if (confirmed < this.epoch.walLsn) {
      this.log.debug(
        { confirmed: formatLsn(confirmed), epochLsn: formatLsn(this.epoch.walLsn) },
        'pruning waits for the watermark to pass the epoch',
      );
      return;
    }
    const { xmin, since } = this.epoch;
    await recordConfirmedXid(client, this.cfg.postgres.publication, xmin, since);
    this.metrics.confirmedEpochXid.set(Number(xmin));
    const prune = this.cfg.outbox.prune;
    for (const table of this.cfg.outbox.tables) {
      if (this.stopped) return;
      if (prune.mode === 'delete') {
        // ctid is unique only within one table: a partitioned table is pruned leaf by leaf.
        const parts = await partitionsOf(client, table);
        for (const relation of parts ? parts.map((p) => p.qualified) : [table.qualified])
          await this.deleteRows(client, table, relation, this.epoch);
      }
      if (prune.mode === 'partitions') await this.maintainPartitions(client, table, this.epoch);
      await this.reportOldest(client, table);
    }
    this.epoch = await startEpoch(client);
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = await connectAdmin(this.cfg.postgres);
    // Partition bounds are read back as text: make their format fixed.
    await client.query(`SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'`);
    client.on('end', () => {
      if (this.client === client) this.client = null;
    });
    this.client = client;
    return client;
  }

  /** Batched DELETEs of the rows the epoch confirmed and older than `retain`, in `relation` (a table or one partition). */
  private async deleteRows(client: pg.Client, table: TableConfig, relation: string, epoch: Epoch): Promise<number> {
    const prune = this.cfg.outbox.prune;
    const created = quoteIdent(table.createdAt);
    const sql = `DELETE FROM ${relation} WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM ${relation}
         WHERE ${created} < now() - make_interval(secs => $1::double precision / 1000)
           AND ${confirmedBy('$2')}
         LIMIT $3))`;
    let total = 0;
    for (;;) {
      if (this.stopped) break;
      const deleted = await bounded(client, prune.lockTimeoutMs, (c) =>
        c.query(sql, [prune.retainMs, epoch.xmin.toString(), prune.batchSize]),
      );
      if (deleted === null) {
        this.metrics.pruneSkipped.inc({ reason: 'lock_timeout' });
        this.log.info({ table: relation }, 'pruning gave up this round: a DELETE waited past prune.lockTimeout');
        break;
      }
      const n = deleted.rowCount ?? 0;
      total += n;
      if (n > 0) this.metrics.prunedRows.inc({ table: table.name }, n);
      if (n < prune.batchSize) break;
      await sleep(prune.pauseMs);
    }
    if (total > 0) this.log.info({ table: relation, rows: total }, 'pruned confirmed rows');
    return total;
  }

  /**
   * Partition mode: daily partitions (UTC) by the created-at column, kept created `premake` days
   * ahead, and an old one dropped whole once its upper bound is older than `retain` and none of
   * its rows is from a transaction at or after the epoch.
   */
  private async maintainPartitions(client: pg.Client, table: TableConfig, epoch: Epoch): Promise<void> {
    const prune = this.cfg.outbox.prune;
    const parts = await partitionsOf(client, table);
    if (parts === null) {
      this.log.warn(
        { table: table.qualified },
        'prune.mode is partitions but the table is not partitioned; nothing is pruned (see outboxd setup --partitioned)',
      );
      return;
    }
    const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
    for (let d = 0; d <= prune.premake; d++) {
      const from = today + d * DAY_MS;
      if (parts.some((p) => p.from !== null && p.to !== null && p.from <= from && from < p.to)) continue;
      await this.createPartition(client, table, from);
    }
    for (const part of parts) {
      if (this.stopped) return;
      if (part.isDefault) {
        // Rows that found no daily partition: pruned row by row.
        await this.deleteRows(client, table, part.qualified, epoch);
        continue;
      }
      if (part.to === null || part.to > Date.now() - prune.retainMs) continue;
      await this.dropPartition(client, table, part, epoch);
    }
  }

  private async createPartition(client: pg.Client, table: TableConfig, fromMs: number): Promise<void> {
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

  private async dropPartition(client: pg.Client, table: TableConfig, part: Partition, epoch: Epoch): Promise<void> {
    // Under the partition's own lock (writers of other days go on), no transaction can add to it;
    // then only rows below the epoch, all confirmed, may remain. The parent is locked only for
    // the DETACH and DROP, bounded by prune.lockTimeout.
    const outcome = await bounded(client, this.cfg.outbox.prune.lockTimeoutMs, async (c) => {
      await c.query(`LOCK TABLE ${part.qualified} IN ACCESS EXCLUSIVE MODE`);
      const { rows } = await c.query<{ n: string }>(`SELECT count(*) AS n FROM ${part.qualified} WHERE NOT (${confirmedBy('$1')})`, [
        epoch.xmin.toString(),
      ]);
      if (Number(rows[0]?.n ?? 0) > 0) return 'unconfirmed' as const;
      await c.query(`ALTER TABLE ${table.qualified} DETACH PARTITION ${part.qualified}`);
      await c.query(`DROP TABLE ${part.qualified}`);
      return 'dropped' as const;
    });
    if (outcome === null) {
      this.metrics.pruneSkipped.inc({ reason: 'lock_timeout' });
      this.log.info({ partition: part.qualified }, 'dropping a partition waited past prune.lockTimeout; retrying next round');
    } else if (outcome === 'unconfirmed') {
      this.log.info({ partition: part.qualified }, 'partition holds rows newer than the confirmed epoch; it is dropped in a later round');
    } else {
      this.metrics.partitionsDropped.inc({ table: table.name });
      this.log.info({ table: table.qualified, partition: part.qualified }, 'dropped a confirmed outbox partition');
    }
  }

  private async reportOldest(client: pg.Client, table: TableConfig): Promise<void> {
    const col = quoteIdent(table.createdAt);
    try {
      const { rows } = await client.query<{ age: number | null }>(
        `SELECT extract(epoch FROM now() - ${col})::float8 AS age FROM ${table.qualified} ORDER BY ${col} LIMIT 1`,
      );
      this.metrics.oldestRowAge.set({ table: table.name }, rows[0]?.age ?? 0);
    } catch (err) {
      this.log.debug({ err, table: table.qualified }, 'reading the oldest row failed');
    }
  }
}

/**
 * The row is confirmed by the epoch: its transaction is below the epoch's xid (`xid`, an xid8 as
 * text). age(xmin) is the 32-bit distance from this transaction's id; "below X0" is "further back
 * than this transaction is from X0". Freezing keeps the raw xid in the `xmin` column (PostgreSQL
 * 9.4 and later), so a frozen row is judged by its own transaction like any other.
 */
function confirmedBy(xid: string): string {
  return `age(xmin) > pg_current_xact_id()::text::bigint - ${xid}::bigint`;
}

/** An epoch: the snapshot's xmin, then the WAL insert position, and when it began (server clock, text). */
interface Epoch {
  xmin: bigint;
  walLsn: Lsn;
  since: string;
}

const DAY_MS = 86_400_000;

/** Starts an epoch: the snapshot's xmin first, then (a later statement) the WAL insert position. */
async function startEpoch(client: pg.Client): Promise<Epoch> {
  const x = await client.query<{ x: string; t: string }>(
    `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x, clock_timestamp()::text AS t`,
  );
  const w = await client.query<{ w: string }>(`SELECT pg_current_wal_insert_lsn()::text AS w`);
  return { xmin: BigInt(x.rows[0]?.x ?? '0'), walLsn: parseLsn(w.rows[0]?.w ?? '0/0'), since: x.rows[0]?.t ?? '' };
}

/**
 * Runs `fn` in a transaction with `lock_timeout` set; resolves null when a lock wait timed out
 * (SQLSTATE 55P03), after rolling back. Other errors roll back and propagate.
 */
async function bounded<T>(client: pg.Client, lockTimeoutMs: number, fn: (c: pg.Client) => Promise<T>): Promise<T | null> {
  await client.query('BEGIN');
  try {
    await client.query(`SET LOCAL lock_timeout = ${Math.max(1, Math.round(lockTimeoutMs))}`);
    const out = await fn(client);
    await client.query('COMMIT');
    return out;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    if ((err as { code?: string }).code === '55P03') return null;
    throw err;
  }
}

interface Partition {
  qualified: string;
  isDefault: boolean;
  /** Range bounds in ms, when they are timestamps (MINVALUE/MAXVALUE: null). */
  from: number | null;
  to: number | null;
}

/** The table's partitions and their bounds, or null when it is not partitioned. */
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

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
