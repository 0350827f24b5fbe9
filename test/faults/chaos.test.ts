import { describe, expect, it } from 'vitest';
import { sleep, writeOutbox } from '../integration/support.js';
import { type SinkKind, bundle, orderAndDuplicates, waitDelivered } from './fixtures.js';

/**
 * kill -9 chaos: the relay is SIGKILLed at random moments while a writer inserts 50,000 rows,
 * and restarted each time. Nothing may be lost; duplicates stay within what was in flight.
 */
const sinks: SinkKind[] = ['kafka', 'rabbitmq'];

describe.each(sinks)('kill -9 chaos → %s', (kind) => {
  it('loses no id across at least 10 SIGKILLs during 50,000 rows; order holds after dedupe', async () => {
    await using b = await bundle({ kind });
    const bundleRef = b;
    let relay = b.start();
    await relay.ready();
    let writing = true;
    const writer = writeOutbox(b.db.client, { total: 50_000, keys: 500, types: b.types, batch: 100, singles: 100 }).finally(() => {
      writing = false;
    });
    const inflightAtKill: number[] = [];
    let kills = 0;
    while (kills < 10 || (writing && kills < 30)) {
      await sleep(150 + Math.random() * 600); // pacing: a random kill interval, not a wait
      inflightAtKill.push(await relay.metric('outboxd_inflight_messages').catch(() => -1));
      relay.kill('SIGKILL');
      expect(await relay.exited).toBe(-1);
      kills++;
      relay = bundleRef.start();
      await relay.ready();
    }
    const rows = await writer;
    await waitDelivered(
      b.reader,
      rows.map((r) => r.id),
    );
    const { violations, duplicates, unique } = orderAndDuplicates(b.reader.delivered());
    process.stdout.write(
      `[chaos ${kind}] kills=${kills} delivered=${b.reader.delivered().length} unique=${unique} duplicates=${duplicates} inflight-at-kill=${inflightAtKill.join(',')}\n`,
    );
    expect(unique).toBe(rows.length);
    expect(violations).toEqual([]);
    // What a kill can duplicate: messages published but not yet confirmed to Postgres, which
    // is at most the in-flight bound (2,000) plus the batch whose confirm was being sent (500).
    expect(duplicates).toBeLessThanOrEqual(kills * 2_500);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  }, 240_000);
});
