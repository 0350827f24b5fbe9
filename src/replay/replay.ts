import { randomUUID } from 'node:crypto';
import pg from 'pg';
import type { Config, SinkConfig } from '../config/config.js';
import { OutboxdError, UsageError } from '../errors.js';
import type { Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import { cloudEventsFor } from '../outbox/cloudevents.js';
import { OutboxMapper } from '../outbox/mapper.js';
import { destinationTemplate, loadSink } from '../sink/index.js';
import { serverVersion } from '../postgres/sql.js';
import { connectAdmin } from '../source/connect.js';
import { classifyPgError } from '../postgres/pg-errors.js';
import type { ReplayCounts, ReplayOptions, ReplaySummary } from './options.js';
import { type ReplayFilter, type TableProgress, filterDifference, readResumePoint, writeResumePoint } from './resume-file.js';
import { ReplayRun } from './run.js';
import { type TableRead, planTable, prepareTable, resolveBounds } from './table-read.js';
import { parseWhere } from './where.js';

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
 * - Resumable: after each confirmed batch the resume file (if any, resume-file.ts) records the
 *   last row.
 *
 * The parts: what to read (table-read.ts), how it is published and counted (run.ts), the options
 * and the summary (options.ts).
 */

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
  const file = opts.resumeFile;
  const previous = file === undefined ? null : readResumePoint(file);
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
    // One mapping for every table, as the relay has; the run's id goes where the relay's position would.
    const mapper = new OutboxMapper(destinationTemplate(cfg.sink), cloudEventsFor(cfg.sink), runId);
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
      writeResumePoint(file, { version: 1, runId, filter, resolved, tables: progress, updatedAt: new Date().toISOString() });
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
