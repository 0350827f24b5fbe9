import type pg from 'pg';
import type { Config } from '../config/config.js';
import { OutboxdError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { EnsuredSlot } from '../source/ensure-slot.js';
import { finishRecovery } from '../source/ensure-slot.js';
import { xminBelow } from '../postgres/xid-sql.js';
import { replayRows } from './replay.js';

/**
 * LOSS-FREE RECOVERY FROM A LOST SLOT (postgres.onLostSlot: recover-from-outbox).
 *
 * The slot is gone (dropped, invalidated, or not synchronised before a failover), and with it
 * the position of every row the broker had not confirmed. The outbox table still holds them,
 * if pruning kept them, and pruning keeps every row at or after the last epoch it recorded in
 * the lost-slot marker (`confirmedXid`, lifecycle/pruner.ts). So:
 *
 * 1. ensureSlot (source/ensure-slot.ts) records the recovery in the marker, then creates a new
 *    slot that exports the snapshot of its consistent point: it streams every transaction that
 *    commits after that point, and the snapshot sees every one that committed before it.
 * 2. This publishes again, through an at-least-once sink of the config's broker, every retained
 *    row from a transaction at or after the lost slot's own confirmed epoch, read in exactly that
 *    snapshot: nothing falls between the two, and nothing is read twice by them.
 * 3. The marker forgets the recovery, and the relay streams from the new slot.
 *
 * A crash in between redoes step 2 on the next start (the marker still says so). Every message
 * keeps its id and carries `outboxd-replay: <run id>`; consumers dedupe by id. The duplicates are
 * bounded by the rows since the last recorded epoch (about one `outbox.prune.interval` of
 * writes, plus the consistent point's few) and counted in outboxd_recovered_messages_total.
 */
export async function recoverFromOutbox(
  cfg: Config,
  admin: pg.Client,
  { recovery, snapshot }: NonNullable<EnsuredSlot['recovery']>,
  metrics: Metrics,
  log: Logger,
  signal: AbortSignal,
): Promise<'done' | 'interrupted'> {
  const runId = `recover-${cfg.postgres.slot}-${new Date().toISOString().replace(/[-:.]/g, '')}`;
  log.warn(
    { slot: cfg.postgres.slot, reason: recovery.reason, fromXid: recovery.fromXid, since: recovery.since, runId },
    'replication slot was lost: publishing again from the outbox every row the last confirmed epoch does not cover, then streaming from the new slot',
  );
  let summary: Awaited<ReturnType<typeof replayRows>>;
  try {
    summary = await replayRows({
      cfg,
      log,
      runId,
      metrics,
      signal,
      snapshot: snapshot.id,
      // Imported: the replication connection that exported it may go.
      onStart: () => void snapshot.release(),
      condition: { sql: `NOT ${xminBelow('$1::bigint')}`, params: [recovery.fromXid] },
    });
  } finally {
    await snapshot.release();
  }
  metrics.recoveredMessages.inc(summary.published);
  if (summary.outcome === 'interrupted') return 'interrupted';
  if (summary.outcome === 'halted') {
    const p = summary.firstPoison;
    throw new OutboxdError(
      'RECOVERY_HALTED',
      `lost-slot recovery stopped at poison row ${p?.id ?? '(no id)'} of ${p?.table ?? '?'} (${p?.reason ?? '?'}: ${p?.message ?? ''}) under outbox.onPoison: halt; fix or remove the row and restart, and recovery resumes (see docs/runbook.md#poison-messages)`,
    );
  }
  await finishRecovery(admin, cfg.postgres);
  log.info(
    { runId, read: summary.read, published: summary.published, deadLettered: summary.deadLettered, elapsedMs: summary.elapsedMs },
    'lost-slot recovery done: every retained row the lost slot may not have delivered was published again',
  );
  return 'done';
}
