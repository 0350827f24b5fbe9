import type { Origin, TxnRef } from '../interfaces.js';
import { type Lsn, formatLsn } from '../lsn.js';
import { sameOrigin } from './origin.js';

/**
 * THE INVARIANT. The watermark is the end LSN of the newest transaction such that it, and every
 * transaction before it, is committed and has no message the broker has not confirmed (or
 * dead-lettered). Only this LSN is ever confirmed to Postgres: confirming past an unconfirmed
 * message would let a crash lose it.
 *
 * The Watermark is the only holder of the confirmed position, and `onMove` is the only way it
 * travels: the replication stream subscribes and reads `lsn` when it writes a status update.
 * Nothing else keeps or passes a confirmed LSN around (docs/adr/0001).
 *
 * The position belongs to one replication session's origin (the server's system identifier and
 * timeline, `origin`): each session starts it from the slot's own position on its server
 * (`reset`), and whoever compares another position with it asks `hasPassed` with that position's
 * origin, never `lsn` alone (docs/adr/0001).
 *
 * Transactions enter in commit order (the order pgoutput sends them). Pure bookkeeping, no I/O;
 * O(1) amortised per transaction.
 */
export class Watermark {
  private queue: Txn[] = [];
  private head = 0;
  private confirmed: Lsn;
  private from: Origin | null = null;
  private listener: (() => void) | null = null;

  constructor(start: Lsn) {
    this.confirmed = start;
  }

  /** The highest LSN that is safe to confirm, on `origin`'s WAL. */
  get lsn(): Lsn {
    return this.confirmed;
  }

  /** The server and timeline whose WAL `lsn` is a position of: the current session's; null before the first. */
  get origin(): Origin | null {
    return this.from;
  }

  /**
   * Whether everything up to `lsn` of `origin`'s WAL is confirmed. False for a position of another
   * origin, whatever the numbers say: after a promotion the new timeline reuses LSNs of the old one
   * for other records, so a confirmed LSN of one proves nothing about the other.
   */
  hasPassed(origin: Origin, lsn: Lsn): boolean {
    return sameOrigin(this.from, origin) && this.confirmed >= lsn;
  }

  /**
   * Calls `listener` (synchronously) each time the watermark moves. One subscriber at a time: the
   * stream of the current replication session. Returns the unsubscribe.
   */
  onMove(listener: () => void): () => void {
    this.listener = listener;
    return () => {
      if (this.listener === listener) this.listener = null;
    };
  }

  /** Transactions begun and not yet released by the watermark. */
  get openTxns(): number {
    return this.queue.length - this.head;
  }

  /** A transaction's first message arrived: it enters the queue. */
  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): Txn {
    const txn = new Txn(xid, commitLsn, commitTimeMs);
    this.queue.push(txn);
    return txn;
  }

  /** Marks COMMIT seen. */
  commit(txn: Txn, endLsn: Lsn): void {
    txn.endLsn = endLsn;
    if (txn.pending === 0) this.advance();
  }

  /**
   * A transaction that produced no message committed at `endLsn`. With nothing open it is done
   * at once. Otherwise it waits behind the open ones, merged into the last entry when that one is
   * done too: consecutive done transactions need only the newest end LSN. So however many empty
   * transactions arrive while a message waits (Postgres 14 sends one per transaction of any
   * table, heartbeats are one), the queue grows by at most one entry.
   */
  commitEmpty(endLsn: Lsn): void {
    if (this.openTxns === 0) {
      this.moveTo(endLsn);
      return;
    }
    const tail = this.queue[this.queue.length - 1] as Txn;
    if (tail.endLsn !== null && tail.pending === 0) {
      if (endLsn > tail.endLsn) tail.endLsn = endLsn;
      return;
    }
    const done = new Txn(0, endLsn, 0);
    done.endLsn = endLsn;
    this.queue.push(done);
  }

  /** A message of `txn` entered the pipeline. */
  track(txn: Txn): void {
    txn.pending++;
  }

  /** A message of `txn` was confirmed (or dead-lettered). */
  release(txn: Txn): void {
    txn.pending--;
    if (txn.pending < 0) throw new Error(`watermark: txn ${txn.xid} released more messages than it tracked`);
    if (txn.pending === 0 && txn.endLsn !== null) this.advance();
  }

  /**
   * Moves the watermark over every leading transaction that is done.
   * Why contiguous: transaction N+1 may be confirmed by the broker before N (different
   * partitions); confirming N+1's end LSN would also tell Postgres that N is done.
   */
  private advance(): void {
    let to = this.confirmed;
    while (this.head < this.queue.length) {
      const t = this.queue[this.head] as Txn;
      if (t.endLsn === null || t.pending > 0) break;
      if (t.endLsn > to) to = t.endLsn;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    this.moveTo(to);
  }

  /**
   * A keepalive reported that the server has sent everything up to `lsn`. If nothing is open or
   * in flight, everything before `lsn` is done, so the slot may advance there: this is what keeps
   * an idle outbox from pinning WAL while other tables are busy. The caller must also know that
   * no received-but-unprocessed data precedes the keepalive.
   */
  observeIdle(lsn: Lsn): void {
    if (this.openTxns === 0) this.moveTo(lsn);
  }

  /**
   * A new session on `origin` streams from the slot's confirmed position there, `slotLsn`: every
   * open transaction is forgotten (it will be sent again), and the watermark becomes exactly
   * `slotLsn`, lower than before or not.
   *
   * Why not keep the higher of the two: the old position may be of another server or timeline.
   * After a failover to a standby that was behind, the new primary reuses LSNs the old one had
   * passed; reporting the old position there would confirm WAL the new server never sent us, and
   * a reconnect would skip it (silent loss), as would a pruning epoch that compared with it.
   * Lowering is safe: the slot's position is what the server resumes from anyway, and status
   * updates never report less than it, so confirmed_flush_lsn does not move back.
   */
  reset(slotLsn: Lsn, origin: Origin): void {
    this.queue = [];
    this.head = 0;
    this.confirmed = slotLsn;
    this.from = { systemId: origin.systemId, timeline: origin.timeline };
  }

  private moveTo(lsn: Lsn): void {
    if (lsn <= this.confirmed) return;
    this.confirmed = lsn;
    this.listener?.();
  }
}

/**
 * One transaction with messages, from its first message until the broker confirmed its last.
 * `pending` counts messages handed to the pipeline and not yet confirmed (or dead-lettered).
 */
export class Txn implements TxnRef {
  pending = 0;
  /** The commit record's end LSN, known once COMMIT arrived; null while the txn is still open. */
  endLsn: Lsn | null = null;
  private lsnCache: string | null = null;
  constructor(
    readonly xid: number,
    readonly commitLsn: Lsn,
    readonly commitTimeMs: number,
  ) {}

  get lsnText(): string {
    this.lsnCache ??= formatLsn(this.commitLsn);
    return this.lsnCache;
  }

  get xidText(): string {
    return String(this.xid);
  }
}
