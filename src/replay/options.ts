import type { Config } from '../config/config.js';
import type { PoisonReason } from '../errors.js';
import type { Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';

/** What a replay is asked to do (replay.ts), and what it reports as it goes and at its end. */

export interface ReplayOptions {
  readonly cfg: Config;
  readonly log: Logger;
  /** The run's id, for the `outboxd-replay` header. Default: a fresh UUID; a resumed run keeps its resume point's. */
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
   * It is part of the filter a resume point must match.
   */
  readonly condition?: { readonly sql: string; readonly params: readonly unknown[] };
  /**
   * Read in this exported snapshot (SET TRANSACTION SNAPSHOT) instead of a fresh one: lost-slot
   * recovery reads exactly what its new slot's consistent point covers (source/slot-create.ts).
   */
  readonly snapshot?: string;
  /** Count per table and destination what would be published; publish nothing, connect no broker. */
  readonly dryRun?: boolean;
  /** Resume from and record progress in this file (see resume-file.ts). Never written by a dry run. */
  readonly resumeFile?: string;
  /** Once the rows are counted, before the first is published. */
  readonly onStart?: (start: ReplayStart) => void;
  /** After every confirmed batch. */
  readonly onProgress?: (progress: ReplayProgress) => void;
  /** Aborted: stop after the batch in progress is confirmed (and its resume point written). */
  readonly signal?: AbortSignal;
  /** Where publish latency and errors are counted (the relay's own, during recovery). */
  readonly metrics?: Metrics;
}

export interface ReplayStart {
  readonly runId: string;
  /** A resume point was found and the run resumes after it. */
  readonly resumed: boolean;
  /** The time bounds as Postgres read them (timestamptz text), or null. */
  readonly from: string | null;
  readonly to: string | null;
  /** Rows to read in this run, over all tables (counted in the replay's snapshot). */
  readonly total: number;
  /** Rows an earlier run of the same resume file already handled. */
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
  /** Rows an earlier run of the same resume file already handled, not read again. */
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
