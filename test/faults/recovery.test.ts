import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { MAIN, sleep, until } from '../integration/support.js';
import { type Bundle, bundle, dropSlotUnderRelay, orderAndDuplicates, steadyWriter, uuid, waitDelivered } from './fixtures.js';

/**
 * postgres.onLostSlot: recover-from-outbox. The slot is dropped under a running relay while rows
 * are written: the relay must create a new slot, publish again from the table every row the lost
 * slot may not have delivered, then stream. Every id arrives; duplicates are bounded and counted;
 * per-key order holds after dedupe. Real Postgres, real Kafka, the relay as a process.
 */

const RECOVER = '  onLostSlot: recover-from-outbox\n';
/** Epochs every 300 ms (pruning itself stays off): the marker's confirmed epoch stays fresh. */
const EPOCHS = (interval: string) => `  prune:\n    mode: off\n    interval: ${interval}\n`;

async function marker(b: Bundle): Promise<Record<string, unknown>> {
  const { rows } = await b.db.client.query<{ c: string | null }>(
    `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
  );
  const c = rows[0]?.c ?? '';
  return c.startsWith('outboxd:') ? (JSON.parse(c.slice('outboxd:'.length)) as Record<string, unknown>) : {};
}

describe('lost-slot recovery from the outbox', () => {
  it('a slot dropped under a running relay while rows are written: every id arrives, duplicates bounded and counted, per-key order holds', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: RECOVER, outboxExtra: EPOCHS('300ms') });
    const relay = b.start();
    await relay.ready();
    const writer = steadyWriter(b, 20, 4);
    await until('a confirmed epoch in the marker', async () => typeof (await marker(b)).confirmedXid === 'string', 30_000, 100);
    await until('rows flowing', async () => b.reader.delivered().length > 50, 30_000, 100);

    await dropSlotUnderRelay(b);
    const droppedAt = performance.now();
    // Rows no slot can stream: their transaction is open when the relay creates the new slot,
    // which waits for it to end and starts after it. Only the table has them.
    const { Client } = (await import('pg')).default;
    const gapTx = new Client({ connectionString: b.db.url });
    await gapTx.connect();
    const gap: string[] = Array.from({ length: 5 }, () => uuid());
    try {
      await gapTx.query('BEGIN');
      for (const [i, id] of gap.entries())
        await gapTx.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'gap', 'T', $3)`, [
          id,
          b.types[0],
          JSON.stringify({ seq: i + 1 }),
        ]);
      await sleep(500);
      await gapTx.query('COMMIT');
    } finally {
      await gapTx.end();
    }
    await until('recovered', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 100);
    const recoveredS = (performance.now() - droppedAt) / 1000;
    await sleep(1_000);
    await writer.stop();
    await waitDelivered(b.reader, [...writer.ids, ...gap], 60_000);

    const delivered = b.reader.delivered();
    // The gap's rows came from recovery alone: without it they would be lost.
    for (const d of delivered.filter((x) => gap.includes(x.id))) expect(d.headers['outboxd-replay']).toMatch(/^recover-/);
    const { violations, duplicates, unique } = orderAndDuplicates(delivered);
    const recovered = await relay.metric('outboxd_recovered_messages_total');
    const replayed = delivered.filter((d) => d.headers['outboxd-replay'] !== undefined).length;
    console.log(
      `[recovery] ${writer.ids.length} rows written, ${unique} unique delivered, ${duplicates} duplicates, ${recovered} published again by recovery (${replayed} carry outboxd-replay), slot drop to recovery done ${recoveredS.toFixed(2)} s`,
    );
    expect(violations).toEqual([]);
    expect(unique).toBe(writer.ids.length + gap.length);
    expect(recovered).toBeGreaterThan(0);
    expect(replayed).toBe(recovered);
    // Every duplicate is a message recovery published again: bounded by what it counted.
    expect(duplicates).toBeLessThanOrEqual(recovered);
    // The relay goes on as usual, from a new slot, with the recovery done in the marker.
    expect((await relay.http('/readyz')).status).toBe(200);
    const m = await marker(b);
    expect(m.recovering).toBeUndefined();
    expect(m.slots).toEqual([b.db.slot]);
    expect(relay.stderr).toContain('replication slot was lost: publishing again from the outbox');
  });

  it('refuses, as exit does, when no confirmed epoch was ever recorded: exit code 4 naming why', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: RECOVER, outboxExtra: EPOCHS('1h') });
    const relay = b.start();
    await relay.ready();
    await dropSlotUnderRelay(b);
    expect(await relay.exited).toBe(4);
    expect(relay.stderr).toMatch(/records no confirmed epoch .* so which rows to publish again is unknown/);
    // Nothing was created in its place.
    const { rows } = await b.db.client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [b.db.slot]);
    expect(rows).toHaveLength(0);
  });

  it('a recovery cut short by a crash is redone on the next start', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: RECOVER, outboxExtra: EPOCHS('300ms') });
    const first = b.start();
    await first.ready();
    const writer = steadyWriter(b, 5, 4);
    await until('a confirmed epoch in the marker', async () => typeof (await marker(b)).confirmedXid === 'string', 30_000, 100);
    await sleep(500);
    await writer.stop();
    // The relay stops; the slot goes while it is down; the marker keeps the epoch.
    first.kill('SIGKILL');
    await first.exited;
    // Its walsender may not have noticed yet that the relay is gone: terminate it, then drop.
    await dropSlotUnderRelay(b);
    // Simulate a crash right after the new slot was created: the marker says "recovering".
    const m = await marker(b);
    const recovering = { slot: b.db.slot, fromXid: m.confirmedXid, since: m.confirmedSince, reason: 'dropped' };
    await b.db.client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [b.db.slot]);
    await b.db.client.query(`COMMENT ON PUBLICATION outboxd IS ${quote(`outboxd:${JSON.stringify({ ...m, recovering })}`)}`);
    expect(status(b)).toMatchObject({ exists: true, recovering: true, confirmedEpoch: { xid: m.confirmedXid } });
    const second = b.startOn(b.httpPort);
    await second.ready();
    await until('recovered', async () => second.stderr.includes('lost-slot recovery done'), 60_000, 100);
    await waitDelivered(b.reader, writer.ids, 60_000);
    expect(await second.metric('outboxd_recovered_messages_total')).toBeGreaterThan(0);
    expect((await marker(b)).recovering).toBeUndefined();
    expect(status(b)).toMatchObject({ recovering: false });
  });
});

/** `outboxd status --json` on the bundle's config. */
function status(b: Bundle): Record<string, unknown> {
  const r = spawnSync(process.execPath, [MAIN, 'status', '-c', b.configFile, '--json'], { encoding: 'utf8' });
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

function quote(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
