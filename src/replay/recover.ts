import type pg from 'pg';
import type { Config } from '../config/config.js';
import { OutboxdError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { type Recovering, finishRecovery } from '../source/slot.js';
import { replayRows } from './replay.js';

/**
 * LOSS-FREE RECOVERY FROM A LOST SLOT (postgres.onLostSlot: recover-from-outbox).
 *
 * The slot is gone (dropped, invalidated, or not synchronised before a failover), and with it
 * the position of every row the broker had not confirmed. The outbox table still holds them,
 * if pruning kept them, and pruning keeps every row at or after the last epoch it recorded in
 * the lost-slot marker (`confirmedXid`, outbox/prune.ts). So:
 *
 * 1. ensureSlot (source/slot.ts) records the recovery in the marker, then creates a new slot:
 *    it streams every transaction that commits after its consistent point.
 * 2. This publishes again, through an at-least-once sink of the config's broker, every retained
 *    row from a transaction at or after `confirmedXid`, read in one snapshot taken after the
 *    slot was created: that covers every row committed before the consistent point, and some
 *    after it (duplicates the stream will send again).
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
  recovering: Recovering,
  metrics: Metrics,
  log: Logger,
  signal: AbortSignal,
): Promise<'done' | 'interrupted'> {
  const runId = `recover-${cfg.postgres.slot}-${new Date().toISOString().replace(/[-:.]/g, '')}`;
  log.warn(
    { slot: recovering.slot, reason: recovering.reason, fromXid: recovering.fromXid, since: recovering.since, runId },
    'replication slot was lost: publishing again from the outbox every row the last confirmed epoch does not cover, then streaming from the new slot',
  );
  const summary = await replayRows({
    cfg,
    log,
    runId,
    metrics,
    signal,
    condition: { sql: UNCONFIRMED, params: [recovering.fromXid] },
  });
  metrics.recoveredMessages.inc(summary.published);
  if (summary.outcome === 'interrupted') return 'interrupted';
  if (summary.outcome === 'halted') {
    const p = summary.firstPoison;
    throw new OutboxdError(
      'RECOVERY_HALTED',
      `lost-slot recovery stopped at poison row ${p?.id ?? '(no id)'} of ${p?.table ?? '?'} (${p?.reason ?? '?'}: ${p?.message ?? ''}) under outbox.onPoison: halt; fix or remove the row and restart, and recovery resumes (see docs/runbook.md#poison-messages)`,
    );
  }
  await finishRecovery(admin, cfg.postgres.publication);
  log.info(
    { runId, read: summary.read, published: summary.published, deadLettered: summary.deadLettered, elapsedMs: summary.elapsedMs },
    'lost-slot recovery done: every retained row the lost slot may not have delivered was published again',
  );
  return 'done';
}

/**
 * The rows recovery publishes again: from a transaction at or after `$1` (an xid8), in 32-bit
 * distance from it, which a read-only snapshot can compute without an xid of its own: every row
 * it sees is below the snapshot's xmax. (Freezing keeps the raw xid in `xmin`.)
 */
const UNCONFIRMED = `((xmin::text::bigint - $1::bigint % 4294967296 + 4294967296) % 4294967296)
    < pg_snapshot_xmax(pg_current_snapshot())::text::bigint - $1::bigint`;
