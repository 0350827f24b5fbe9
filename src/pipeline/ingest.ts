import type { PublishedUpTo } from '../positions/published.js';
import type { Txn, Watermark } from '../positions/watermark.js';
import type { Config, TableConfig } from '../config/config.js';
import { OutboxdError, PoisonError } from '../errors.js';
import type { Lsn } from '../lsn.js';
import { type OutboxMapper, type RowValues, type TableBinding, requireColumns } from '../outbox/mapper.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { IgnoredKind as SourceIgnored, Relation, WholeRow } from '../source/pgoutput.js';
import type { ChangeHandler } from '../source/stream.js';
import type { Pipeline } from './pipeline.js';
import { maxMessageBytes } from '../sink/limits.js';
import { poisonLetter, valuePoison } from './poison.js';
import { messageKey } from '../outbox/members.js';
import { keyShard } from '../postgres/shard.js';
import { FENCE_PREFIX, type FenceGate, parseFence } from './fence.js';
import type { Shard } from '../config/config.js';

/** What produces no message: the source's kinds, and a logical message another shard publishes. */
type IgnoredKind = SourceIgnored | 'other_shard_message' | 'resharded';

/**
 * The glue between the source and the pipeline: turns decoded changes into tracked
 * transactions and mapped messages, in WAL order.
 */
export class Ingest implements ChangeHandler<TableBinding> {
  /** The transaction between BEGIN and COMMIT, if any; `events` counts its outbox events so far. */
  private open: { xid: number; commitLsn: Lsn; commitTimeMs: number; events: number } | null = null;
  /** Exactly-once: events the checkpoint proved published (skipped), and those it covered but could not prove (published again). */
  private skipped = 0;
  private unproven = 0;
  /** An unproven event was reported this session (one warning per session). */
  private warnedUnproven = false;
  /**
   * Its watermark entry, made at its first message. A transaction without one (another table's,
   * a heartbeat, an empty one: Postgres 14 sends those) never gets an entry of its own: at COMMIT
   * it merges into the watermark's tail, so the watermark stays bounded while the broker is away.
   */
  private txn: Txn | null = null;
  readonly maxValueBytes: number;
  private readonly byName = new Map<string, { config: TableConfig; index: number }>();
  private readonly ignoredCounts = new Map<IgnoredKind, number>();
  /** Transactions read since the last scrape; a prom-client call per transaction costs on the hot path. */
  private transactions = 0;
  /**
   * Set when a graceful stop begins. The transaction in progress is finished (so what of it was
   * published gets confirmed); later transactions are left for the next run, never confirmed.
   */
  paused = false;
  /** A reshard this relay takes part in (lifecycle/reshard.ts), set by the session; null: none. */
  gate: FenceGate | null = null;

  /** True while a transaction has begun and not committed. */
  get inTransaction(): boolean {
    return this.open !== null;
  }

  constructor(
    private readonly cfg: Config,
    private readonly mapper: OutboxMapper,
    private readonly watermark: Watermark,
    private readonly pipeline: Pipeline,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    /** Exactly-once: what the broker holds already (set by the sink; never restarted for other sinks, so it skips nothing). */
    private readonly published: PublishedUpTo,
  ) {
    this.maxValueBytes = maxMessageBytes(cfg);
    cfg.outbox.tables.forEach((t, index) => {
      this.byName.set(`${t.schema}.${t.table}`, { config: t, index });
    });
    metrics.probes.flushTransactions = () => {
      metrics.transactions.inc(this.transactions);
      this.transactions = 0;
    };
    metrics.probes.flushSkipped = () => {
      metrics.checkpointSkipped.inc(this.skipped);
      metrics.checkpointUnproven.inc(this.unproven);
      this.skipped = 0;
      this.unproven = 0;
    };
    metrics.probes.flushIgnored = () => {
      for (const [kind, n] of this.ignoredCounts) metrics.changesIgnored.inc({ kind }, n);
      this.ignoredCounts.clear();
    };
  }

  /** A replication session ended or starts: forget its open transaction (its COMMIT will not come). */
  resetSession(): void {
    this.open = null;
    this.txn = null;
    this.warnedUnproven = false;
    this.releaseCommitWaiters();
  }

  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): void {
    if (this.paused) return; // stopping: take no new transaction
    this.open = { xid, commitLsn, commitTimeMs, events: 0 };
    this.txn = null;
  }

  commit(endLsn: Lsn): void {
    if (!this.open) return;
    this.transactions++;
    if (this.txn !== null) this.watermark.commit(this.txn, endLsn);
    else this.watermark.commitEmpty(endLsn);
    this.open = null;
    this.txn = null;
    this.releaseCommitWaiters();
  }

  private commitWaiters: Array<() => void> = [];

  private releaseCommitWaiters(): void {
    const waiters = this.commitWaiters;
    this.commitWaiters = [];
    for (const w of waiters) w();
  }

  /** Resolves at the next COMMIT (at once when no transaction is open). */
  transactionEnd(): Promise<void> {
    if (this.open === null) return Promise.resolve();
    return new Promise((resolve) => this.commitWaiters.push(resolve));
  }

  /** Binds a mapped table; the decoder keeps the binding and hands it back with each insert. */
  relation(rel: Relation): TableBinding | null {
    const entry = this.byName.get(`${rel.schema}.${rel.name}`);
    if (!entry) return null;
    const binding = this.mapper.bind(entry.config, rel.columns);
    requireColumns(binding, entry.index, `${rel.schema}.${rel.name}`);
    return binding;
  }

  insert(_rel: Relation, binding: TableBinding, values: RowValues, row: WholeRow): Promise<void> | undefined {
    if (this.paused && !this.open) return undefined;
    if (this.gate?.discarding) {
      this.ignore('resharded');
      return undefined;
    }
    const index = this.nextEvent();
    if (index === null) return undefined;
    const txn = this.requireTxn();
    const problem = row.problem();
    if (problem !== null) {
      const at = binding.at;
      const error = valuePoison(problem.reason, problem.column, problem.bytes, this.maxValueBytes);
      // The dead letter carries the other columns; the one with the problem is null.
      const whole = JSON.stringify(row.wholeRow());
      return this.pipeline.pushPoison(poisonLetter(error, txn, index, values[at.id] ?? null, values[at.aggregateid] ?? null, whole), txn);
    }
    try {
      return this.pipeline.push(this.mapper.fromRow(binding, values, txn, index), txn);
    } catch (err) {
      if (!(err instanceof PoisonError)) throw err;
      const at = binding.at;
      // The dead letter carries the whole row, every column, as the table holds it.
      const whole = JSON.stringify(row.wholeRow());
      return this.pipeline.pushPoison(poisonLetter(err, txn, index, values[at.id] ?? null, values[at.aggregateid] ?? null, whole), txn);
    }
  }

  message(prefix: string, content: Buffer | null, length: number, transactional: boolean, _lsn: Lsn): Promise<void> | undefined {
    if (this.paused && (!this.open || !transactional)) return undefined;
    if (prefix === this.cfg.postgres.heartbeatPrefix) {
      this.metrics.heartbeatsReceived.inc();
      return undefined;
    }
    if (prefix === FENCE_PREFIX) return this.fence(content, transactional);
    if (this.gate?.discarding) {
      this.ignore('resharded');
      return undefined;
    }
    if (!this.cfg.outbox.messages.enabled || prefix !== this.cfg.outbox.messages.prefix) {
      this.ignore('foreign_message');
      return undefined;
    }
    if (!transactional) {
      // A non-transactional message has no commit to confirm past; it cannot be relayed safely.
      this.log.warn({ prefix }, 'ignoring a non-transactional outbox message: emit it with pg_logical_emit_message(true, ...)');
      this.ignore('non_transactional_message');
      return undefined;
    }
    if (this.cfg.postgres.shard && !ownsMessage(this.cfg.postgres.shard, content)) {
      this.ignore('other_shard_message');
      return undefined;
    }
    const index = this.nextEvent();
    if (index === null) return undefined;
    const txn = this.requireTxn();
    if (content === null) {
      const error = new PoisonError(
        'oversized',
        `logical message of ${length} bytes is over the sink's message limit of ${this.maxValueBytes} bytes`,
      );
      return this.pipeline.pushPoison(poisonLetter(error, txn, index, null, null, ''), txn);
    }
    try {
      return this.pipeline.push(this.mapper.fromLogicalMessage(content, txn, index), txn);
    } catch (err) {
      if (!(err instanceof PoisonError)) throw err;
      return this.pipeline.pushPoison(poisonLetter(err, txn, index, err.subject?.id ?? null, err.subject?.key ?? null, content), txn);
    }
  }

  /**
   * A reshard fence. Its transaction stays in the watermark until the gate has recorded what the
   * fence changed for this slot, so the slot is never confirmed past a fence it has not acted on.
   */
  private fence(content: Buffer | null, transactional: boolean): Promise<void> | undefined {
    const fence = transactional ? parseFence(content) : null;
    if (this.gate === null || fence === null) return undefined;
    const txn = this.requireTxn();
    this.watermark.track(txn);
    return this.gate.atFence(fence, () => this.watermark.release(txn));
  }

  ignore(kind: IgnoredKind): void {
    this.ignoredCounts.set(kind, (this.ignoredCounts.get(kind) ?? 0) + 1);
  }

  keepalive(lsn: Lsn): void {
    if (this.paused || this.open !== null || !this.pipeline.idle) return;
    this.watermark.observeIdle(lsn);
  }

  /**
   * The index of the open transaction's next outbox event, or null when the broker holds it
   * already (exactly-once restart): such an event is skipped, and never joins the watermark. An
   * event the checkpoint covers only by number, from WAL this session does not share with it (a
   * failover), is published again, never skipped (PublishedUpTo).
   */
  private nextEvent(): number | null {
    const open = this.open;
    if (!open) throw new OutboxdError('PG_PROTOCOL', 'replication stream sent a change outside a transaction');
    const index = open.events++;
    const verdict = this.published.judge(open.commitLsn, index);
    if (verdict === 'published') {
      this.skipped++;
      return null;
    }
    if (verdict === 'unproven') this.noteUnproven();
    return index;
  }

  private noteUnproven(): void {
    this.unproven++;
    if (this.warnedUnproven) return;
    this.warnedUnproven = true;
    const detail = this.published.unprovenDetail();
    this.log.warn(
      detail,
      `exactly-once: ${detail.reason}, so the checkpoint proves nothing from ${detail.provableBelow} on; the events it covers there are published again (outboxd_checkpoint_unproven_total)`,
    );
  }

  private requireTxn(): Txn {
    const open = this.open;
    if (!open) throw new OutboxdError('PG_PROTOCOL', 'replication stream sent a change outside a transaction');
    this.txn ??= this.watermark.begin(open.xid, open.commitLsn, open.commitTimeMs);
    return this.txn;
  }
}

/**
 * Whether this shard publishes a logical message: every slot sees every message (a row filter
 * cannot reach them), so each shard takes those whose key hashes to it, as its publication's
 * filter does for rows. One without a readable key (poison, or over the size limit, whose content
 * was not kept) belongs to shard 0, as a row with a NULL key does, so it is reported once.
 */
export function ownsMessage(shard: Shard, content: Buffer | null): boolean {
  const key = content === null ? null : messageKey(content);
  return (key === null ? 0 : keyShard(key, shard.count)) === shard.index;
}
