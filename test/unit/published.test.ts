import { describe, expect, it } from 'vitest';
import { EVERY_LSN, comparableBelow, sameOrigin } from '../../src/positions/origin.js';
import { PublishedUpTo, describePosition } from '../../src/positions/published.js';
import type { SourceIdentity, TimelineSwitch } from '../../src/interfaces.js';
import { parseTimelineHistory } from '../../src/source/identity.js';

/** A server of system 7 on `timeline`, whose history is `history` (null: the server gave none). */
function on(timeline: number, history: TimelineSwitch[] | null = []): SourceIdentity {
  return { systemId: '7', database: 'shop', timeline, history };
}

/** Timeline 3, branched from 2 at 0x500, which branched from 1 at 0x300. */
const TL3 = on(3, [
  { timeline: 1, switchLsn: 0x300n },
  { timeline: 2, switchLsn: 0x500n },
]);

/** The holder after a session on `source` read `checkpoint` (commit LSN, index, timeline). */
function holder(source: SourceIdentity, commitLsn: bigint, index: number, timeline: number | null): PublishedUpTo {
  const p = new PublishedUpTo();
  p.restart(source, { commitLsn, index, timeline });
  return p;
}

describe('which WAL two timelines share (comparableBelow)', () => {
  it('the same timeline: everywhere', () => {
    expect(comparableBelow(3, TL3)).toBe(EVERY_LSN);
    expect(comparableBelow(1, on(1))).toBe(EVERY_LSN);
  });

  it('an ancestor: below the LSN where its line ended, each its own', () => {
    expect(comparableBelow(1, TL3)).toBe(0x300n);
    expect(comparableBelow(2, TL3)).toBe(0x500n);
  });

  it('a timeline not in the history (a sibling, a later one), or a history the server did not give: nothing', () => {
    expect(comparableBelow(4, TL3)).toBe(0n);
    expect(comparableBelow(5, on(3, [{ timeline: 1, switchLsn: 0x300n }]))).toBe(0n);
    expect(comparableBelow(1, on(3, null))).toBe(0n);
    expect(comparableBelow(2, on(1))).toBe(0n);
  });

  it('unknown (a version 1 record): everywhere on timeline 1, else below the earliest switchpoint, or nothing without a history', () => {
    expect(comparableBelow(null, on(1))).toBe(EVERY_LSN);
    expect(comparableBelow(null, TL3)).toBe(0x300n);
    expect(comparableBelow(null, on(3, null))).toBe(0n);
  });
});

describe('PublishedUpTo', () => {
  it('nothing read: every event is unpublished', () => {
    const p = new PublishedUpTo();
    expect(p.judge(0n, 0)).toBe('unpublished');
    p.restart(TL3, null);
    expect(p.judge(0x100n, 0)).toBe('unpublished');
    expect(p.checkpoint).toBeNull();
  });

  it('the same timeline: at or before the checkpoint by (commit LSN, index) is published, after it unpublished', () => {
    const p = holder(TL3, 0x800n, 2, 3);
    expect(p.judge(0x100n, 9)).toBe('published');
    expect(p.judge(0x800n, 2)).toBe('published');
    expect(p.judge(0x800n, 3)).toBe('unpublished');
    expect(p.judge(0x801n, 0)).toBe('unpublished');
  });

  it('an ancestor below its switchpoint: published; at or above it, what the checkpoint covers is unproven', () => {
    // Timeline 1 reached 0x900; this server's timeline 3 left timeline 1 at 0x300.
    const p = holder(TL3, 0x900n, 4, 1);
    expect(p.judge(0x2ffn, 0)).toBe('published');
    expect(p.judge(0x300n, 0)).toBe('unproven');
    expect(p.judge(0x600n, 0)).toBe('unproven');
    expect(p.judge(0x900n, 4)).toBe('unproven');
    expect(p.judge(0x900n, 5)).toBe('unpublished');
    // The middle ancestor shares more: up to 0x500.
    const q = holder(TL3, 0x900n, 4, 2);
    expect(q.judge(0x4ffn, 0)).toBe('published');
    expect(q.judge(0x500n, 0)).toBe('unproven');
  });

  it('an ancestor’s checkpoint below the switchpoint is a position of this timeline too: later events are simply unpublished', () => {
    const p = holder(TL3, 0x200n, 0, 1);
    expect(p.judge(0x1ffn, 7)).toBe('published');
    expect(p.judge(0x400n, 0)).toBe('unpublished');
    expect(p.lsnOnThisTimeline).toBe(0x200n);
  });

  it('a sibling timeline, or a history the server did not give: nothing is proven, nothing skipped', () => {
    for (const p of [holder(TL3, 0x900n, 0, 4), holder(on(3, null), 0x900n, 0, 1)]) {
      expect(p.judge(0x1n, 0)).toBe('unproven');
      expect(p.judge(0x900n, 0)).toBe('unproven');
      expect(p.judge(0x901n, 0)).toBe('unpublished');
      expect(p.lsnOnThisTimeline).toBeNull();
    }
  });

  it('a version 1 checkpoint on timeline 1: compared everywhere, as before timelines were stored', () => {
    const p = holder(on(1), 0x3096930n, 999, null);
    expect(p.judge(0x3096930n, 999)).toBe('published');
    expect(p.judge(0x3096930n, 1000)).toBe('unpublished');
  });

  it('a version 1 checkpoint after a promotion: compared only below the earliest switchpoint', () => {
    // Issue 21, finding 3: a checkpoint 0/3096930#999 of timeline 1, a new slot on timeline 2 that
    // branched at 0/3005698: the 50 new events on timeline 2 come between the two.
    const tl2 = on(2, [{ timeline: 1, switchLsn: 0x3005698n }]);
    const p = holder(tl2, 0x3096930n, 999, null);
    expect(p.judge(0x3005697n, 0)).toBe('published');
    expect(p.judge(0x3005698n, 0)).toBe('unproven');
    expect(p.judge(0x3050000n, 0)).toBe('unproven');
    // Timeline 3: only below timeline 1's end, the WAL every timeline of the history shares.
    const q = holder(TL3, 0x900n, 0, null);
    expect(q.judge(0x2ffn, 0)).toBe('published');
    expect(q.judge(0x400n, 0)).toBe('unproven');
  });

  it('what this session commits is on its own timeline: proof everywhere, also below the checkpoint of another timeline', () => {
    const p = holder(TL3, 0x900n, 0, 1);
    expect(p.judge(0x400n, 0)).toBe('unproven');
    p.advance({ commitLsn: 0x400n, index: 0 });
    expect(p.judge(0x400n, 0)).toBe('published');
    expect(p.judge(0x401n, 0)).toBe('unproven');
    expect(p.judge(0x2ffn, 0)).toBe('published');
    expect(p.checkpoint).toEqual({ commitLsn: 0x400n, index: 0, timeline: 3 });
    expect(p.lsnOnThisTimeline).toBe(0x400n);
    p.advance({ commitLsn: 0x901n, index: 0 });
    expect(p.judge(0x901n, 1)).toBe('unpublished');
  });

  it('a restart forgets the last session: a checkpoint read again is judged against the new server', () => {
    const p = holder(on(1), 0x900n, 0, 1);
    p.advance({ commitLsn: 0xa00n, index: 0 });
    p.restart(on(2, [{ timeline: 1, switchLsn: 0x300n }]), { commitLsn: 0xa00n, index: 0, timeline: 1 });
    expect(p.judge(0x400n, 0)).toBe('unproven');
    expect(p.checkpoint).toEqual({ commitLsn: 0xa00n, index: 0, timeline: 1 });
  });

  it('names why it cannot prove, with the checkpoint, both timelines and the switchpoint', () => {
    const detail = holder(on(2, [{ timeline: 1, switchLsn: 0x3005698n }]), 0x3096930n, 999, 1).unprovenDetail();
    expect(detail).toEqual({
      checkpoint: '0/3096930#999 on timeline 1',
      checkpointTimeline: 1,
      timeline: 2,
      provableBelow: '0/3005698',
      reason: 'the checkpoint is on timeline 1, whose line ended at 0/3005698 in the history of timeline 2',
    });
    expect(holder(TL3, 0x900n, 0, 4).unprovenDetail().reason).toBe(
      'the checkpoint is on timeline 4, which is not in the history of timeline 3',
    );
    expect(holder(TL3, 0x900n, 0, null).unprovenDetail().reason).toBe(
      'the checkpoint was written without its timeline (version 1); every timeline in the history of timeline 3 shares WAL only below 0/300',
    );
    expect(describePosition({ commitLsn: 0x10n, index: 1 })).toBe('0/10#1');
  });
});

describe('origins and timeline histories', () => {
  it('compares origins by system identifier and timeline', () => {
    expect(sameOrigin({ systemId: '7', timeline: 2 }, { systemId: '7', timeline: 2 })).toBe(true);
    expect(sameOrigin({ systemId: '7', timeline: 2 }, { systemId: '7', timeline: 1 })).toBe(false);
    expect(sameOrigin({ systemId: '7', timeline: 2 }, { systemId: '8', timeline: 2 })).toBe(false);
    expect(sameOrigin(null, { systemId: '7', timeline: 2 })).toBe(false);
  });

  it('reads a history file as TIMELINE_HISTORY sends it: ancestors oldest first, comments and blank lines skipped', () => {
    const text = '1\t0/14E0DA8\tno recovery target specified\n\n# a comment\n2\t1/2000000\tat restore point "x"\n';
    expect(parseTimelineHistory(text, 3)).toEqual([
      { timeline: 1, switchLsn: 0x14e0da8n },
      { timeline: 2, switchLsn: 0x1_0200_0000n },
    ]);
    expect(() => parseTimelineHistory('3\t0/10\tx\n', 3)).toThrow(/unreadable line in the history of timeline 3/);
    expect(() => parseTimelineHistory('one\t0/10\n', 2)).toThrow(/unreadable/);
  });
});
