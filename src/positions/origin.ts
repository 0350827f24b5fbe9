import type { Origin, SourceIdentity } from '../interfaces.js';
import { type Lsn, formatLsn } from '../lsn.js';

/**
 * When two WAL positions may be compared (docs/adr/0009). Pure.
 *
 * An LSN names a byte of one timeline's WAL. After a promotion the new timeline branches off at a
 * switchpoint: below it, its WAL is its parent's; at and above it, the same LSNs hold other
 * records on the two lines. A standby shares its primary's system identifier, so the identifier
 * alone cannot tell a position of the old primary from one of the promoted standby.
 */

/** Above every LSN: a position of the current timeline compares everywhere on it. */
export const EVERY_LSN: Lsn = 1n << 64n;

/** Positions of `a` and `b` compare as numbers: the same server lineage, the same timeline. */
export function sameOrigin(a: Origin | null, b: Origin | null): boolean {
  return a !== null && b !== null && a.systemId === b.systemId && a.timeline === b.timeline;
}

/**
 * Below which LSN of `source`'s current timeline a position read on `timeline` names the same
 * record: the WAL the two share. EVERY_LSN when they are one timeline; 0 when they share nothing
 * that `source` can prove.
 *
 * - The same timeline: everywhere.
 * - An ancestor in the current timeline's history: below the LSN where that ancestor's line
 *   ended (its switchpoint). A commit record replayed whole before the promotion has its commit
 *   LSN below it: a switchpoint is a record boundary.
 * - null, a position stored without its timeline (a version 1 checkpoint): it may come from any
 *   timeline of the history, so only the WAL all of them share: below the earliest switchpoint,
 *   or everywhere while the current timeline is 1 (no promotion happened on this lineage).
 * - Anything else (a sibling branch, a later timeline, a history the server did not give):
 *   nothing.
 */
export function comparableBelow(timeline: number | null, source: SourceIdentity): Lsn {
  if (timeline === source.timeline) return EVERY_LSN;
  const history = source.history;
  if (timeline === null) {
    if (source.timeline === 1) return EVERY_LSN;
    if (history === null || history.length === 0) return 0n;
    let earliest = EVERY_LSN;
    for (const h of history) if (h.switchLsn < earliest) earliest = h.switchLsn;
    return earliest;
  }
  const ancestor = history?.find((h) => h.timeline === timeline);
  return ancestor === undefined ? 0n : ancestor.switchLsn;
}

/**
 * Why positions of `timeline` compare with `source` only below `below`, in words (for the one
 * warning per session that names what the checkpoint cannot prove).
 */
export function whyIncomparable(timeline: number | null, source: SourceIdentity, below: Lsn): string {
  const now = `timeline ${source.timeline}`;
  if (timeline === null) {
    return below === 0n
      ? `the checkpoint was written without its timeline (version 1), and the server gave no history of ${now}`
      : `the checkpoint was written without its timeline (version 1); every timeline in the history of ${now} shares WAL only below ${formatLsn(below)}`;
  }
  if (source.history === null) return `the checkpoint is on timeline ${timeline}, and the server gave no history of ${now}`;
  if (below === 0n) return `the checkpoint is on timeline ${timeline}, which is not in the history of ${now}`;
  return `the checkpoint is on timeline ${timeline}, whose line ended at ${formatLsn(below)} in the history of ${now}`;
}
