import { describe, expect, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { startPostgres } from '../harness/postgres.js';
import { sleep, until, writeOutbox } from '../integration/support.js';
import { type SinkKind, bundle, dropSlotUnderRelay, orderAndDuplicates, waitDelivered } from './fixtures.js';

/**
 * The relay's life: a slot lost while it runs, a hot standby taking over from a killed leader,
 * a graceful stop under load, and an idle outbox beside a busy database.
 */

describe('lifecycle', () => {
  it('a slot dropped while the relay runs: exit 4 with what happened and what to do, no new slot', async () => {
    await using b = await bundle({ kind: 'kafka' });
    const relay = b.start();
    await relay.ready();
    // The walsender holds the slot; end it and drop the slot before the relay gets back in.
    await dropSlotUnderRelay(b);
    expect(await relay.exited).toBe(4);
    const fatal = relay.logLines().find((l) => l.level === 'fatal');
    expect(String(fatal?.msg)).toMatch(/replication slot s_\w+ is gone .* will not recreate it\. See docs\/runbook\.md#lost-slot/);
    expect(await b.db.slotInfo()).toBeNull();
  });

  it('idle outbox, busy database: retained WAL stays under 64 MB and heartbeats keep the slot moving', async () => {
    // A private server: retained WAL is the cluster's, and the shared server carries the other
    // test files' writes and open transactions, which hold every slot's restart point back.
    await using server = await startPostgres(15);
    await using b = await bundle({ kind: 'kafka', pgUrl: server.url });
    await b.db.client.query('CREATE TABLE churn (id bigserial PRIMARY KEY, filler text NOT NULL)');
    const relay = b.start();
    await relay.ready();
    const heartbeats0 = await relay.metric('outboxd_heartbeats_total');
    const start = await b.db.walLsn();
    let maxRetained = 0;
    // "5 minutes" compressed: ~85 MB of other writes at ~1.7 MB/s, heartbeats every second.
    // Postgres moves a logical slot's restart_lsn only to the snapshot serialized at the
    // previous xl_running_xacts record (logged about every 15 s), so even a perfect relay
    // retains 15-30 s of writes depending on when one looks: about 50 MB at this rate. A relay
    // that stopped confirming would retain all of it.
    const deadline = Date.now() + 50_000;
    while (Date.now() < deadline) {
      await b.db.client.query(`INSERT INTO churn (filler) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 1400) g`);
      await b.db.client.query('DELETE FROM churn');
      const slot = await b.db.slotInfo();
      maxRetained = Math.max(maxRetained, slot?.retained ?? 0);
      await sleep(1_000); // pacing: the write rate (~1.7 MB/s), not a wait for anything
    }
    const written = Number((await b.db.walLsn()) - start);
    process.stdout.write(`[idle] wrote ${(written / 1e6).toFixed(0)} MB of WAL, max retained ${(maxRetained / 1e6).toFixed(1)} MB\n`);
    expect(written).toBeGreaterThan(70_000_000);
    expect(maxRetained).toBeLessThan(64 * 1024 * 1024);
    expect(await relay.metric('outboxd_heartbeats_total')).toBeGreaterThan(heartbeats0 + 10);
    expect(await relay.metric('outboxd_heartbeats_received_total')).toBeGreaterThan(10);
    expect(await relay.metric('outboxd_messages_published_total')).toBe(0);
  }, 120_000);
});

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`lifecycle → ${kind}`, () => {
    it('two instances on one slot: one streams, the other waits as standby and takes over within 15 s of a SIGKILL, no id lost', async () => {
      await using b = await bundle({ kind });
      const first = b.startOn(await getFreePort());
      await first.ready();
      const second = b.startOn(await getFreePort());
      await until(
        'the second instance to report standby',
        async () => (await second.http('/readyz').catch(() => ({ body: '' }))).body.includes('standby'),
        20_000,
      );
      expect(await second.metric('outboxd_leader')).toBe(0);
      expect(await second.metric('outboxd_state', { state: 'standby' })).toBe(1);
      expect(await first.metric('outboxd_leader')).toBe(1);
      expect(second.stderr).toMatch(/waiting as standby/);

      const rows = await writeOutbox(b.db.client, { total: 3_000, keys: 100, types: b.types });
      first.kill('SIGKILL');
      const killedAt = Date.now();
      await second.ready(20_000);
      const takeoverMs = Date.now() - killedAt;
      process.stdout.write(`[standby] takeover in ${takeoverMs} ms\n`);
      expect(takeoverMs).toBeLessThan(15_000);
      expect(second.stderr).toMatch(/took over as leader/);
      const more = await writeOutbox(b.db.client, { total: 1_000, keys: 100, types: b.types });
      await waitDelivered(
        b.reader,
        [...rows, ...more].map((r) => r.id),
      );
      const firstIds = new Set(rows.map((r) => r.id));
      expect(orderAndDuplicates(b.reader.delivered().filter((d) => firstIds.has(d.id))).violations).toEqual([]);
    });

    it('SIGTERM under load: drains, confirms the slot, exits 0 within the grace period; a restart re-sends nothing', async () => {
      await using b = await bundle({ kind });
      const relay = b.start();
      await relay.ready();
      const writer = writeOutbox(b.db.client, { total: 20_000, keys: 200, types: b.types });
      // Under load: the relay is publishing the stream when the signal comes.
      await until('rows flowing', async () => b.reader.delivered().length >= 500, 60_000, 20);
      const t0 = Date.now();
      relay.kill('SIGTERM');
      expect(await relay.exited).toBe(0);
      const stopMs = Date.now() - t0;
      expect(stopMs).toBeLessThan(20_000);
      expect(relay.logLines().some((l) => l.msg === 'outboxd stopped' && l.drained === true)).toBe(true);
      const deliveredBeforeStop = new Set(b.reader.delivered().map((d) => d.id));
      const rows = await writer;
      // Everything delivered before the stop was confirmed: the next run starts after it.
      const again = b.start();
      await again.ready();
      await waitDelivered(
        b.reader,
        rows.map((r) => r.id),
      );
      const { duplicates } = orderAndDuplicates(b.reader.delivered());
      process.stdout.write(
        `[graceful] stop took ${stopMs} ms, delivered before stop ${deliveredBeforeStop.size}, duplicates after restart ${duplicates}\n`,
      );
      expect(duplicates).toBe(0);
    });
  });
}
