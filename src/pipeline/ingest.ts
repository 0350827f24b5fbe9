import type { Txn, Watermark } from '../checkpoint/watermark.js';
import { type Config, REQUIRED_COLUMN_FIELDS, type TableConfig } from '../config/schema.js';
import { ConfigError, OutboxdError, PoisonError } from '../errors.js';
import type { DeadLetter } from '../interfaces.js';
import type { Lsn } from '../lsn.js';
import type { OutboxMapper, RowValues, TableBinding } from '../outbox/mapper.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { IgnoredKind, Relation, WholeRow } from '../source/pgoutput.js';
import type { ChangeHandler } from '../source/stream.js';
import type { Pipeline } from './pipeline.js';

/**
 * The glue between the source and the pipeline: turns decoded changes into tracked
 * transactions and mapped messages, in WAL order.
 */
export class Ingest implements ChangeHandler<TableBinding> {
  private txn: Txn | null = null;
  private readonly byName = new Map<string, { config: TableConfig; index: number }>();
  private readonly ignoredCounts = new Map<IgnoredKind, number>();
  /** Transactions read since the last scrape; a prom-client call per transaction costs on the hot path. */
  private transactions = 0;
  /**
   * Set when a graceful stop begins. The transaction in progress is finished (so what of it was
   * published gets confirmed); later transactions are left for the next run, never confirmed.
   */
  paused = false;

  /** True while a transaction has begun and not committed. */
  get inTransaction(): boolean {
    return this.txn !== null;
  }

  constructor(
    private readonly cfg: Config,
    private readonly mapper: OutboxMapper,
    private readonly watermark: Watermark,
    private readonly pipeline: Pipeline,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    cfg.outbox.tables.forEach((t, index) => {
      this.byName.set(`${t.schema}.${t.table}`, { config: t, index });
    });
    metrics.probes.flushTransactions = () => {
      metrics.transactions.inc(this.transactions);
      this.transactions = 0;
    };
    metrics.probes.flushIgnored = () => {
      for (const [kind, n] of this.ignoredCounts) metrics.changesIgnored.inc({ kind }, n);
      this.ignoredCounts.clear();
    };
  }

  /** A new replication session starts: forget the last one's open transaction. */
  resetSession(): void {
    this.txn = null;
  }

  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): void {
    if (this.paused) return; // stopping: take no new transaction
    this.txn = this.watermark.begin(xid, commitLsn, commitTimeMs);
  }

  commit(endLsn: Lsn): void {
    if (!this.txn) return;
    this.transactions++;
    const lsn = this.watermark.commit(this.txn, endLsn);
    this.txn = null;
    if (lsn !== null) this.onAdvance(lsn);
  }

  /** Set by the relay: where a moved watermark goes (the stream's confirm). */
  onAdvance: (lsn: Lsn) => void = () => undefined;

  /** Binds a mapped table; the decoder keeps the binding and hands it back with each insert. */
  relation(rel: Relation): TableBinding | null {
    const entry = this.byName.get(`${rel.schema}.${rel.name}`);
    if (!entry) return null;
    const binding = this.mapper.bind(entry.config, rel.columns);
    for (const field of REQUIRED_COLUMN_FIELDS) {
      // bind() gives a field the table has no column for the column count (see TableBinding.at).
      if (binding.at[field] === rel.columns.length) {
        throw new ConfigError(
          `outbox.tables[${entry.index}].columns.${field}`,
          `table ${rel.schema}.${rel.name} has no column "${entry.config.columns[field]}" (columns: ${rel.columns.map((c) => c.name).join(', ')})`,
        );
      }
    }
    return binding;
  }

  insert(_rel: Relation, binding: TableBinding, values: RowValues, row: WholeRow): Promise<void> | undefined {
    if (this.paused && !this.txn) return undefined;
    const txn = this.requireTxn();
    try {
      return this.pipeline.push(this.mapper.fromRow(binding, values, txn), txn);
    } catch (err) {
      if (!(err instanceof PoisonError)) throw err;
      const at = binding.at;
      // The dead letter carries the whole row, every column, as the table holds it.
      const whole = JSON.stringify(row.wholeRow());
      return this.pipeline.pushPoison(letter(err, txn, values[at.id] ?? null, values[at.aggregateid] ?? null, whole), txn);
    }
  }

  message(prefix: string, content: Buffer, transactional: boolean, _lsn: Lsn): Promise<void> | undefined {
    if (this.paused && (!this.txn || !transactional)) return undefined;
    if (prefix === this.cfg.postgres.heartbeatPrefix) {
      this.metrics.heartbeatsReceived.inc();
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
    const txn = this.requireTxn();
    try {
      return this.pipeline.push(this.mapper.fromLogicalMessage(content, txn), txn);
    } catch (err) {
      if (!(err instanceof PoisonError)) throw err;
      return this.pipeline.pushPoison(letter(err, txn, null, null, content), txn);
    }
  }

  ignore(kind: IgnoredKind): void {
    this.ignoredCounts.set(kind, (this.ignoredCounts.get(kind) ?? 0) + 1);
  }

  keepalive(lsn: Lsn): Lsn | null {
    if (this.paused || this.txn !== null || !this.pipeline.idle) return null;
    return this.watermark.observeIdle(lsn);
  }

  private requireTxn(): Txn {
    if (!this.txn) throw new OutboxdError('PG_PROTOCOL', 'replication stream sent a change outside a transaction');
    return this.txn;
  }
}

function letter(error: PoisonError, txn: Txn, id: string | null, key: string | null, payload: string | Buffer): DeadLetter {
  return {
    id,
    key,
    destination: null,
    payload,
    contentType: typeof payload === 'string' ? 'application/json' : 'application/octet-stream',
    headers: id ? { id } : {},
    error,
    txn,
  };
}
