import type { Position, SourceIdentity, StoredPosition } from '../interfaces.js';
import { type Lsn, formatLsn } from '../lsn.js';
import { EVERY_LSN, comparableBelow, whyIncomparable } from './origin.js';

/**
 * What the relay knows of an event before publishing it (exactly-once, docs/adr/0009):
 * - `published`: the broker holds it already; skip it (it counts as confirmed);
 * - `unpublished`: it comes after everything the broker holds; publish it;
 * - `unproven`: the checkpoint's position is at or after it, but on WAL this session does not
 *   share with it, so the comparison proves nothing; publish it (again, perhaps), and count it.
 */
export type Verdict = 'published' | 'unpublished' | 'unproven';

/**
 * THE INVARIANT. An event is skipped as already published only when a position the broker
 * committed is at or after it AND that position names the same WAL: it was read on this
 * session's timeline, or on an ancestor below the LSN where that ancestor's line ended (see
 * origin.ts). Where the checkpoint cannot prove an event published, the event is published again;
 * it is never skipped (a duplicate, never a loss).
 *
 * PublishedUpTo is the one holder of the exactly-once position: the sink sets it (from the
 * checkpoint it reads when a session starts or after a doubt, and at each commit), the ingest asks
 * it about every event it reads, and the sink asks it about every batch it is given (after a
 * re-read, part of a batch may be in Kafka already). Nothing else keeps an exactly-once position.
 *
 * Pure bookkeeping, no I/O; O(1) per event: what the checkpoint can prove is worked out once,
 * when it is read, as one LSN bound.
 */
export class PublishedUpTo {
  private source: SourceIdentity | null = null;
  /** The broker's checkpoint as read for this session (or after a doubt), on whatever timeline. */
  private read: StoredPosition | null = null;
  /** Commit LSNs below this name the same WAL in `read` and in this session. */
  private provableBelow: Lsn = 0n;
  /** The last position this session committed: on this session's timeline, so it compares everywhere. */
  private committed: Position | null = null;

  /**
   * A session starts on `source` (or the sink re-read the checkpoint in one): `checkpoint` is the
   * last position the broker holds for this slot and database, or null.
   */
  restart(source: SourceIdentity, checkpoint: StoredPosition | null): void {
    this.source = source;
    this.read = checkpoint;
    this.provableBelow = checkpoint === null ? 0n : comparableBelow(checkpoint.timeline, source);
    this.committed = null;
  }

  /**
   * The broker committed events up to `p`, an event of this session. Events arrive in commit order,
   * so `p` is after every event judged before it; it may lie below `read`, but only when the
   * events between were `unproven`: a commit record below `provableBelow` that `read` covers is
   * `published` and never committed again, and every later event lies above it too.
   */
  advance(p: Position): void {
    this.committed = { commitLsn: p.commitLsn, index: p.index };
  }

  /** The verdict on the event at index `index` of the transaction whose commit record is at `commitLsn`. */
  judge(commitLsn: Lsn, index: number): Verdict {
    const c = this.committed;
    if (c !== null && atOrBefore(commitLsn, index, c)) return 'published';
    const r = this.read;
    if (r === null || !atOrBefore(commitLsn, index, r)) return 'unpublished';
    // The checkpoint is at or after this event by number: proof only where the WAL is shared.
    return commitLsn < this.provableBelow ? 'published' : 'unproven';
  }

  /** The last position the broker holds, as known (for logs), with its timeline. */
  get checkpoint(): StoredPosition | null {
    if (this.committed !== null) return { ...this.committed, timeline: this.source?.timeline ?? null };
    return this.read;
  }

  /**
   * The commit LSN of the broker's last position when it names WAL of this session's timeline
   * (for outboxd_checkpoint_lag_bytes, which subtracts the confirmed LSN from it), else null.
   */
  get lsnOnThisTimeline(): Lsn | null {
    if (this.committed !== null) return this.committed.commitLsn;
    const r = this.read;
    return r !== null && r.commitLsn < this.provableBelow ? r.commitLsn : null;
  }

  /**
   * Why events cannot be proven published, for the one warning per session: the checkpoint, its
   * timeline and this session's, and the LSN from which the checkpoint proves nothing.
   */
  unprovenDetail(): {
    checkpoint: string;
    checkpointTimeline: number | null;
    timeline: number | null;
    provableBelow: string;
    reason: string;
  } {
    const r = this.read;
    const source = this.source;
    return {
      checkpoint: describePosition(r),
      checkpointTimeline: r?.timeline ?? null,
      timeline: source?.timeline ?? null,
      provableBelow: this.provableBelow >= EVERY_LSN ? 'everywhere' : formatLsn(this.provableBelow),
      reason: r === null || source === null ? 'no checkpoint' : whyIncomparable(r.timeline, source, this.provableBelow),
    };
  }
}

/** (commitLsn, index) at or before `p`. */
function atOrBefore(commitLsn: Lsn, index: number, p: Position): boolean {
  return commitLsn < p.commitLsn || (commitLsn === p.commitLsn && index <= p.index);
}

/** `0/3096930#999`, with `@tl<n>` when its timeline is known; `none` for no position. */
export function describePosition(p: StoredPosition | Position | null): string {
  if (p === null) return 'none';
  const timeline = 'timeline' in p && p.timeline !== null ? ` on timeline ${p.timeline}` : '';
  return `${formatLsn(p.commitLsn)}#${p.index}${timeline}`;
}
