import { isUtf8 } from 'node:buffer';
import type pg from 'pg';
import type { Config } from '../config/config.js';
import { PoisonError } from '../errors.js';
import type { DeadLetter, OutboxMessage, Sink, TxnRef } from '../interfaces.js';
import { ZERO_LSN } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import { type Metrics, createMetrics } from '../observability/metrics.js';
import { REPLAY_HEADER } from '../outbox/position-headers.js';
import { setOwn } from '../own.js';
import { disposePoison, poisonLetter, valuePoison } from '../pipeline/poison.js';
import { Publisher } from '../pipeline/publisher.js';
import { letterFor } from '../sink/dead-letter.js';
import { maxMessageBytes } from '../sink/limits.js';
import type { ReplayCounts, ReplayOptions, ReplaySummary } from './options.js';
import type { RowKey } from './resume-file.js';
import { KEY_COLUMNS, type TableRead } from './table-read.js';

/** The cursor's name; one replay runs one cursor at a time on its own connection. */
const CURSOR = 'outboxd_replay';
/** Distinct (table, destination) pairs the summary counts apart. */
const MAX_DESTINATIONS = 1_000;

/** A message on its way, with the key of the row it came from. */
interface Pending {
  readonly message: OutboxMessage;
  readonly key: RowKey;
}

/** One replay's publishing and counting, table after table. */
export class ReplayRun {
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
    // No commit LSN or transaction id is known for a row read from the table: the mapper (made
    // with the run's id) puts the replay header where the relay's position headers go.
    let m: OutboxMessage;
    try {
      m = read.mapper.fromRow(read.binding, values, noPosition(ms));
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
    const key = error.subject?.key ?? text(at.aggregateid);
    return poisonLetter(error, noPosition(Date.now()), 0, id, key, JSON.stringify(whole), { [REPLAY_HEADER]: this.runId });
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
        // Halted: the resume point stays before this row, so a rerun starts with it (and publishes
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
    const publisher = this.publisher as Publisher;
    if (!(await disposePoison(this.policy, letter, publisher, this.log, 'the replay stops at it, and resumes there'))) return false;
    this.counts.deadLettered++;
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
