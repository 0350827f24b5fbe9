import { describe, expect, it } from 'vitest';
import { Watermark } from '../../src/checkpoint/watermark.js';

describe('Watermark', () => {
  it('does not advance past a transaction with unconfirmed messages', () => {
    const w = new Watermark(100n);
    const t1 = w.begin(1, 150n, 0);
    w.track(t1);
    expect(w.commit(t1, 200n)).toBeNull();
    const t2 = w.begin(2, 250n, 0);
    w.track(t2);
    expect(w.commit(t2, 300n)).toBeNull();
    // The later transaction is confirmed first: the watermark must wait for the earlier one.
    expect(w.release(t2)).toBeNull();
    expect(w.lsn).toBe(100n);
    expect(w.release(t1)).toBe(300n);
    expect(w.openTxns).toBe(0);
  });

  it('advances over transactions without messages once everything before them is done', () => {
    const w = new Watermark(0n);
    const t1 = w.begin(1, 10n, 0);
    w.track(t1);
    w.commit(t1, 20n);
    const t2 = w.begin(2, 30n, 0);
    expect(w.commit(t2, 40n)).toBeNull(); // empty, but t1 is still pending
    expect(w.release(t1)).toBe(40n);
  });

  it('never releases an open transaction even if all its messages are confirmed', () => {
    const w = new Watermark(0n);
    const t1 = w.begin(1, 10n, 0);
    w.track(t1);
    expect(w.release(t1)).toBeNull();
    expect(w.lsn).toBe(0n);
    expect(w.commit(t1, 20n)).toBe(20n);
  });

  it('accepts a keepalive position only when nothing is open', () => {
    const w = new Watermark(50n);
    const t = w.begin(1, 60n, 0);
    expect(w.observeIdle(500n)).toBeNull();
    w.commit(t, 70n);
    expect(w.lsn).toBe(70n);
    expect(w.observeIdle(500n)).toBe(500n);
    expect(w.observeIdle(400n)).toBeNull();
  });

  it('throws when more messages are released than tracked', () => {
    const w = new Watermark(0n);
    const t = w.begin(1, 1n, 0);
    expect(() => w.release(t)).toThrow(/released more/);
  });

  it('keeps working across many transactions (queue compaction)', () => {
    const w = new Watermark(0n);
    const open = [];
    for (let i = 1; i <= 5000; i++) {
      const t = w.begin(i, BigInt(i * 10), 0);
      w.track(t);
      w.commit(t, BigInt(i * 10 + 5));
      open.push(t);
    }
    for (const t of open.slice(0, 4999)) w.release(t);
    expect(w.lsn).toBe(49995n);
    w.release(open[4999]!);
    expect(w.lsn).toBe(50005n);
  });

  it('merges empty transactions that wait behind an open one into one entry', () => {
    const w = new Watermark(100n);
    // Nothing open: an empty transaction is done at once.
    expect(w.commitEmpty(150n)).toBe(150n);
    const t = w.begin(1, 160n, 0);
    w.track(t);
    w.commit(t, 200n);
    // The broker is away: a million empty transactions arrive (Postgres 14, heartbeats).
    let moved = 0;
    for (let i = 0; i < 1_000_000; i++) if (w.commitEmpty(300n + BigInt(i)) !== null) moved++;
    expect(moved).toBe(0);
    expect(w.openTxns).toBe(2);
    // The message is confirmed: the watermark jumps past all of them.
    expect(w.release(t)).toBe(300n + 999_999n);
    expect(w.openTxns).toBe(0);
  });
});
