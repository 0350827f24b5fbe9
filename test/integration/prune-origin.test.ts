import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { Origin } from '../../src/interfaces.js';
import type { Lsn } from '../../src/lsn.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import { type Confirmed, Pruner } from '../../src/lifecycle/pruner.js';
import { walInsertPoint } from '../../src/source/identity.js';
import { readMarker, updateMarker, withSlot } from '../../src/postgres/marker.js';
import { pgUrl } from '../harness/services.js';
import { TestDb, writeOutbox } from './support.js';

/** A watermark as the pruner sees it: a position of one origin, set by the test. */
class FakeConfirmed implements Confirmed {
  constructor(
    public lsn: Lsn,
    public origin: Origin | null,
  ) {}
  hasPassed(origin: Origin, lsn: Lsn): boolean {
    return this.origin !== null && this.origin.systemId === origin.systemId && this.origin.timeline === origin.timeline && this.lsn >= lsn;
  }
}

/**
 * Issue 21, finding 3, as pruning meets it. A pruning epoch's WAL position belongs to the server
 * and timeline it was taken on. After a failover to a standby that was behind, the new timeline
 * reuses LSNs below the old one's: a watermark there that passes the epoch's number proves
 * nothing about the epoch's transactions, and recording the epoch would let a later lost-slot
 * recovery of this slot start after rows it never delivered.
 */
describe('pruning epochs compare only positions of one origin', () => {
  it('a watermark on another timeline, however high, records no epoch and starts a new one; on the epoch’s own timeline it records it', async () => {
    const db = await new TestDb(await pgUrl(15)).create();
    try {
      await db.client.query('CREATE PUBLICATION outboxd FOR TABLE public.outbox');
      // The relay records its slot when it creates it; this test has no relay.
      await updateMarker(db.client, 'outboxd', (m) => withSlot(m, db.slot));
      await writeOutbox(db.client, { total: 5, keys: 1, types: ['alpha'] });
      const cfg = parseConfig(
        `postgres:\n  url: ${db.url}\n  slot: ${db.slot}\noutbox:\n  tables:\n    - name: public.outbox\n  prune:\n    mode: delete\n    retain: 0s\n`,
        {},
      );
      const here = (await walInsertPoint(db.client)).origin;
      const elsewhere: Origin = { systemId: here.systemId, timeline: here.timeline + 1 };
      const confirmed = new FakeConfirmed(0xffff_ffff_ffffn, elsewhere);
      const pruner = new Pruner(cfg, confirmed, createMetrics(), createLogger('silent'));
      try {
        await pruner.round(); // the epoch starts
        await pruner.round(); // another timeline: not passed, a new epoch
        await pruner.round();
        const before = await readMarker(db.client, 'outboxd');
        expect(before.epochs.get(db.slot)).toBeUndefined();
        const left = await db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox');
        expect(Number(left.rows[0]?.n)).toBe(5);

        // The same numbers on the epoch's own origin: recorded, and the confirmed rows pruned.
        confirmed.origin = here;
        await pruner.round();
        const after = await readMarker(db.client, 'outboxd');
        expect(after.epochs.get(db.slot)).toBeDefined();
        const gone = await db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox');
        expect(Number(gone.rows[0]?.n)).toBe(0);
      } finally {
        await pruner.stop();
      }
    } finally {
      await db.client.end();
    }
  });
});
