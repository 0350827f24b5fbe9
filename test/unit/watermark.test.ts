import { describe, expect, it } from 'vitest';
import { Watermark } from '../../src/positions/watermark.js';

/** A watermark and every position its one subscriber heard, in order. */
function watched(start: bigint) {
  const w = new Watermark(start);
  const moves: bigint[] = [];
  w.onMove(() => moves.push(w.lsn));
  return { w, moves };
}

describe('Watermark', () => {
  it('does not advance past a transaction with unconfirmed messages', () => {
    const { w, moves } = watched(100n);
    const t1 = w.begin(1, 150n, 0);
    w.track(t1);
    w.commit(t1, 200n);
    const t2 = w.begin(2, 250n, 0);
    w.track(t2);
    w.commit(t2, 300n);
    // The later transaction is confirmed first: the watermark must wait for the earlier one.
    w.release(t2);
    expect(w.lsn).toBe(100n);
    expect(moves).toEqual([]);
    w.release(t1);
    expect(moves).toEqual([300n]);
    expect(w.openTxns).toBe(0);
  });

  it('advances over transactions without messages once everything before them is done', () => {
    const { w, moves } = watched(0n);
    const t1 = w.begin(1, 10n, 0);
    w.track(t1);
    w.commit(t1, 20n);
    w.commitEmpty(40n); // empty, but t1 is still pending
    expect(moves).toEqual([]);
    w.release(t1);
    expect(moves).toEqual([40n]);
  });

  it('never releases an open transaction even if all its messages are confirmed', () => {
    const { w, moves } = watched(0n);
    const t1 = w.begin(1, 10n, 0);
    w.track(t1);
    w.release(t1);
    expect(w.lsn).toBe(0n);
    w.commit(t1, 20n);
    expect(moves).toEqual([20n]);
  });

  it('accepts a keepalive position only when nothing is open, and never moves back', () => {
    const { w, moves } = watched(50n);
    const t = w.begin(1, 60n, 0);
    w.track(t);
    w.observeIdle(500n);
    w.release(t);
    w.commit(t, 70n);
    w.observeIdle(500n);
    w.observeIdle(400n);
    expect(moves).toEqual([70n, 500n]);
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
    const { w, moves } = watched(100n);
    // Nothing open: an empty transaction is done at once.
    w.commitEmpty(150n);
    expect(moves).toEqual([150n]);
    const t = w.begin(1, 160n, 0);
    w.track(t);
    w.commit(t, 200n);
    // The broker is away: a million empty transactions arrive (Postgres 14, heartbeats).
    for (let i = 0; i < 1_000_000; i++) w.commitEmpty(300n + BigInt(i));
    expect(moves).toEqual([150n]);
    expect(w.openTxns).toBe(2);
    // The message is confirmed: the watermark jumps past all of them at once.
    w.release(t);
    expect(moves).toEqual([150n, 300n + 999_999n]);
    expect(w.openTxns).toBe(0);
  });

  it('has one subscriber at a time, and unsubscribing stops the calls', () => {
    const w = new Watermark(0n);
    const heard: string[] = [];
    const offA = w.onMove(() => heard.push('a'));
    w.onMove(() => heard.push('b'));
    w.commitEmpty(10n);
    offA(); // no longer the subscriber: does not remove b
    w.commitEmpty(20n);
    expect(heard).toEqual(['b', 'b']);
  });

  it('a new session starts exactly at the slot’s position on its server, lower than before or not, and forgets open transactions', () => {
    const { w, moves } = watched(0n);
    const tl1 = { systemId: '7', timeline: 1 };
    const tl2 = { systemId: '7', timeline: 2 };
    w.reset(0x100n, tl1);
    const open = w.begin(1, 0x9000n, 0);
    w.track(open);
    w.commitEmpty(0x3096930n);
    expect(w.lsn).toBe(0x100n);
    w.release(open);
    w.commit(open, 0x9100n);
    w.commitEmpty(0x3096930n);
    expect(w.lsn).toBe(0x3096930n);
    // The standby was promoted behind the old primary: its slot is at 0/3005698, on timeline 2.
    w.reset(0x3005698n, tl2);
    expect(w.lsn).toBe(0x3005698n);
    expect(w.origin).toEqual(tl2);
    expect(w.openTxns).toBe(0);
    w.commitEmpty(0x3005800n);
    expect(moves.at(-1)).toBe(0x3005800n);
  });

  it('has passed an LSN only on its own origin: a position of another timeline or server proves nothing', () => {
    const w = new Watermark(0n);
    const tl2 = { systemId: '7', timeline: 2 };
    expect(w.hasPassed(tl2, 0n)).toBe(false);
    w.reset(0x500n, tl2);
    expect(w.hasPassed(tl2, 0x500n)).toBe(true);
    expect(w.hasPassed(tl2, 0x501n)).toBe(false);
    expect(w.hasPassed({ systemId: '7', timeline: 1 }, 0x100n)).toBe(false);
    expect(w.hasPassed({ systemId: '8', timeline: 2 }, 0x100n)).toBe(false);
  });
});
