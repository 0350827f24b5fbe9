import { describe, expect, it } from 'vitest';
import { RelayProcess, until, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, dropSlotUnderRelay, markerOf, orderAndDuplicates, waitDelivered } from './fixtures.js';

/**
 * An upgrade in place (issue 21): the previous release (scripts/versions.json
 * previousRelease.commit, built by scripts/build-previous.sh, OUTBOXD_PREVIOUS_MAIN) runs on an
 * outbox, is stopped (cleanly or by SIGKILL) mid-stream, and this build takes over the same slot,
 * marker and checkpoint topic. What the old one wrote (a version 1 marker, a version 1
 * checkpoint record) must carry over: at least once, no row is skipped; exactly once, every row
 * arrives once.
 */

const PREVIOUS = process.env.OUTBOXD_PREVIOUS_MAIN;
if (!PREVIOUS) throw new Error('OUTBOXD_PREVIOUS_MAIN is not set: npm test sets it (scripts/prereqs.sh builds the previous release)');

function previous(b: Bundle): RelayProcess {
  return new RelayProcess(b.configFile, b.httpPort, {}, PREVIOUS);
}

async function stopped(relay: RelayProcess, signal: NodeJS.Signals): Promise<void> {
  relay.kill(signal);
  expect(await relay.exited).toBe(signal === 'SIGKILL' ? -1 : 0);
}

/**
 * The previous release publishes `total` rows over `keys` keys (in batches of `keys`) and is
 * stopped by `signal` once more than `stopAfter` arrived; then this build takes over. Resolves,
 * this build running, once every row arrived (within `timeoutMs`).
 */
async function takeOverMidStream(
  b: Bundle,
  signal: NodeJS.Signals,
  o: { total: number; keys: number; stopAfter: number; timeoutMs: number },
): Promise<RelayProcess> {
  const old = previous(b);
  let writer: ReturnType<typeof writeOutbox>;
  try {
    await old.ready();
    writer = writeOutbox(b.db.client, { total: o.total, keys: o.keys, types: b.types, batch: o.keys });
    await until('the old relay publishing', async () => b.reader.delivered().length > o.stopAfter, 60_000, 50);
    await stopped(old, signal);
  } finally {
    old.kill('SIGKILL');
  }
  const relay = b.start();
  await relay.ready();
  const rows = await writer;
  await waitDelivered(
    b.reader,
    rows.map((r) => r.id),
    o.timeoutMs,
  );
  return relay;
}

describe('upgrade from the previous release on the same slot', () => {
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    it(`at least once, the old relay stopped by ${signal} mid-stream: every row arrives, per-key order holds`, async () => {
      await using b = await bundle({ kind: 'kafka' });
      const relay = await takeOverMidStream(b, signal, { total: 6_000, keys: 50, stopAfter: 500, timeoutMs: 120_000 });
      const { violations } = orderAndDuplicates(b.reader.delivered());
      expect(violations).toEqual([]);
      relay.kill('SIGTERM');
      expect(await relay.exited).toBe(0);
    }, 240_000);
  }

  it('exactly once, the old relay SIGKILLed mid-stream: this build resumes after its version 1 checkpoint, every row once', async () => {
    await using b = await bundle({ kind: 'kafka', exactlyOnce: true });
    const relay = await takeOverMidStream(b, 'SIGKILL', { total: 8_000, keys: 100, stopAfter: 1_000, timeoutMs: 180_000 });
    await b.reader.caughtUp();
    const { duplicates, violations } = orderAndDuplicates(b.reader.delivered());
    expect(duplicates).toBe(0);
    expect(violations).toEqual([]);
    // It resumed from the old checkpoint (timeline 1: a version 1 record proves it), not from zero.
    expect(await relay.metric('outboxd_checkpoint_unproven_total')).toBe(0);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  }, 300_000);

  it('the old relay’s version 1 marker: its confirmed epoch carries over, and a lost slot is recovered from it without skipping a row', async () => {
    await using b = await bundle({
      kind: 'kafka',
      postgresExtra: '  onLostSlot: recover-from-outbox\n',
      outboxExtra: '  prune:\n    mode: off\n    interval: 300ms\n',
    });
    const old = previous(b);
    try {
      await old.ready();
      const first = await writeOutbox(b.db.client, { total: 300, keys: 10, types: b.types });
      await waitDelivered(
        b.reader,
        first.map((r) => r.id),
        60_000,
      );
      await until(
        'the old relay’s epoch in its version 1 marker',
        async () => {
          const { rows } = await b.db.client.query<{ c: string | null }>(
            `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
          );
          return /"confirmedXid"/.test(rows[0]?.c ?? '');
        },
        30_000,
        100,
      );
      await stopped(old, 'SIGTERM');
    } finally {
      old.kill('SIGKILL');
    }
    // Rows the old relay never delivered, then its slot is lost while no relay runs.
    const unseen = await writeOutbox(b.db.client, { total: 200, keys: 10, types: b.types });
    await dropSlotUnderRelay(b);
    const relay = b.start();
    await relay.ready();
    await until('recovered', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 100);
    await waitDelivered(
      b.reader,
      unseen.map((r) => r.id),
      60_000,
    );
    const marker = await markerOf(b);
    expect(marker.slots).toContain(b.db.slot);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  }, 240_000);
});
