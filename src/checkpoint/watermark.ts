import type { TxnRef } from '../interfaces.js';
import { type Lsn, formatLsn } from '../lsn.js';

/**
 * One decoded transaction, from BEGIN until the broker confirmed its last message.
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

/**
 * The contiguous low watermark. Transactions enter in commit order (the order pgoutput sends
 * them). The watermark is the end LSN of the newest transaction such that it, and every one
 * before it, is committed and has no unconfirmed message. Only that LSN is ever confirmed to
 * Postgres: confirming past an unconfirmed message would let a crash lose it.
 *
 * Pure bookkeeping, no I/O; O(1) amortised per transaction.
 */
export class Watermark {
  private queue: Txn[] = [];
  private head = 0;
  private confirmed: Lsn;

  constructor(start: Lsn) {
    this.confirmed = start;
  }

  /** The highest LSN that is safe to confirm. */
  get lsn(): Lsn {
    return this.confirmed;
  }

  /** Transactions begun and not yet released by the watermark. */
  get openTxns(): number {
    return this.queue.length - this.head;
  }

  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): Txn {
    const txn = new Txn(xid, commitLsn, commitTimeMs);
    this.queue.push(txn);
    return txn;
  }

  /** Marks COMMIT seen. Returns the new watermark if it moved, else null. */
  commit(txn: Txn, endLsn: Lsn): Lsn | null {
    txn.endLsn = endLsn;
    return txn.pending === 0 ? this.advance() : null;
  }

  /**
   * A transaction that produced no message committed at `endLsn`. With nothing open it is done
   * at once (returns the new watermark). Otherwise it waits behind the open ones, merged into the
   * last entry when that one is done too: consecutive done transactions need only the newest end
   * LSN. So however many empty transactions arrive while a message waits (Postgres 14 sends one
   * per transaction of any table, heartbeats are one), the queue grows by at most one entry.
   */
  commitEmpty(endLsn: Lsn): Lsn | null {
    if (this.openTxns === 0) {
      if (endLsn <= this.confirmed) return null;
      this.confirmed = endLsn;
      return endLsn;
    }
    const tail = this.queue[this.queue.length - 1] as Txn;
    if (tail.endLsn !== null && tail.pending === 0) {
      if (endLsn > tail.endLsn) tail.endLsn = endLsn;
      return null;
    }
    const done = new Txn(0, endLsn, 0);
    done.endLsn = endLsn;
    this.queue.push(done);
    return null;
  }

  /** A message of `txn` entered the pipeline. */
  track(txn: Txn): void {
    txn.pending++;
  }

  /** A message of `txn` was confirmed. Returns the new watermark if it moved, else null. */
  release(txn: Txn): Lsn | null {
    txn.pending--;
    if (txn.pending < 0) throw new Error(`watermark: txn ${txn.xid} released more messages than it tracked`);
    return txn.pending === 0 && txn.endLsn !== null ? this.advance() : null;
  }

  /**
   * Moves the watermark over every leading transaction that is done.
   * Why contiguous: transaction N+1 may be confirmed by the broker before N (different
   * partitions); confirming N+1's end LSN would also tell Postgres that N is done.
   */
  advance(): Lsn | null {
    const before = this.confirmed;
    while (this.head < this.queue.length) {
      const t = this.queue[this.head] as Txn;
      if (t.endLsn === null || t.pending > 0) break;
      if (t.endLsn > this.confirmed) this.confirmed = t.endLsn;
      this.head++;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return this.confirmed > before ? this.confirmed : null;
  }

  /**
   * A keepalive reported that the server has sent everything up to `lsn`. If nothing is open or
   * in flight, everything before `lsn` is done, so the slot may advance there: this is what keeps
   * an idle outbox from pinning WAL while other tables are busy. The caller must also know that
   * no received-but-unprocessed data precedes the keepalive.
   */
  observeIdle(lsn: Lsn): Lsn | null {
    if (this.openTxns > 0 || lsn <= this.confirmed) return null;
    this.confirmed = lsn;
    return lsn;
  }

  /** Forgets every open transaction (after the stream restarts from the slot). */
  reset(start: Lsn): void {
    this.queue = [];
    this.head = 0;
    if (start > this.confirmed) this.confirmed = start;
  }
}
