import { describe, expect, it } from 'vitest';
import { parseLsn } from '../../src/lsn.js';
import { startKafka } from '../harness/kafka.js';
import { startPostgres } from '../harness/postgres.js';
import { startRabbitMQ } from '../harness/rabbitmq.js';
import { sleep, until, writeOutbox } from '../integration/support.js';
import { type Bundle, type SinkKind, bundle, orderAndDuplicates, rssBytes, startDelivering, waitDelivered } from './fixtures.js';

/**
 * Outages of the broker and of Postgres, against private servers the test can stop.
 */

/** A broker of the test's own, which it may stop; `await using` destroys it. */
async function privateBroker(kind: SinkKind) {
  if (kind === 'kafka') {
    const k = await startKafka();
    return {
      opts: { kafkaBrokers: k.brokers.join(',') },
      stop: () => k.stop(),
      start: () => k.start(),
      [Symbol.asyncDispose]: () => k.destroy(),
    };
  }
  const r = await startRabbitMQ();
  return { opts: { amqpUrl: r.url }, stop: () => r.stop(), start: () => r.start(), [Symbol.asyncDispose]: () => r.destroy() };
}

async function walsenderPid(b: Bundle): Promise<number | null> {
  const { rows } = await b.db.client.query<{ pid: number | null }>(
    'SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1',
    [b.db.slot],
  );
  return rows[0]?.pid ?? null;
}

describe.each(['kafka', 'rabbitmq'] as SinkKind[])('broker outage → %s', (kind) => {
  it('for 60 s: bounded memory, not ready, replication kept alive, nothing confirmed past the broker; then resumes without loss', async () => {
    await using broker = await privateBroker(kind);
    await using b = await bundle({ kind, ...broker.opts });
    const { relay, rows: first } = await startDelivering(b, 3_000, 100);
    const pid = await walsenderPid(b);
    await broker.stop();
    // Nothing written from here on can be confirmed by the broker until it is back. The slot
    // may still move over WAL that holds none of it (other databases' writes, while nothing
    // is in flight); checked below against the commit LSNs the messages carry.
    let maxConfirmed = 0n;
    const during: typeof first = [];
    let maxRss = 0;
    let readyWhileDown = false;
    const deadline = Date.now() + 60_000;
    let round = 0;
    while (Date.now() < deadline) {
      if (round++ % 5 === 0) during.push(...(await writeOutbox(b.db.client, { total: 1_000, keys: 100, types: b.types })));
      maxRss = Math.max(maxRss, rssBytes(relay.child.pid as number));
      if ((await relay.http('/readyz')).status === 200 && round > 3) readyWhileDown = true;
      const slot = await b.db.slotInfo();
      if ((slot?.confirmed ?? 0n) > maxConfirmed) maxConfirmed = slot?.confirmed ?? 0n;
      await sleep(1_000); // pacing: one sample (and every fifth round a write) a second for the outage's minute
    }
    expect(readyWhileDown).toBe(false);
    expect((await relay.http('/readyz')).body).toMatch(/not ok/);
    // The replication connection survived the whole outage (keepalives answered).
    expect(await walsenderPid(b)).toBe(pid);
    // The in-flight bound is 2,000 messages / 4 MiB; the process itself needs ~100 MB.
    process.stdout.write(
      `[outage ${kind}] max RSS ${(maxRss / 1e6).toFixed(1)} MB, inflight ${await relay.metric('outboxd_inflight_messages')}\n`,
    );
    expect(maxRss).toBeLessThan(200 * 1024 * 1024);
    // The bound, plus at most one socket read of WAL that was already parsed when reading paused.
    expect(await relay.metric('outboxd_inflight_messages')).toBeLessThanOrEqual(2_000 + 500);
    expect(await relay.metric('outboxd_publish_errors_total')).toBeGreaterThan(0);

    await broker.start();
    await relay.ready(90_000);
    const all = [...first, ...during];
    await waitDelivered(
      b.reader,
      all.map((r) => r.id),
      120_000,
    );
    // The slot never passed the commit of a message the broker had not confirmed: the
    // earliest commit (outboxd.lsn header) among the rows written during the outage.
    const duringIds = new Set(during.map((r) => r.id));
    const firstDuringCommit = b.reader
      .delivered()
      .filter((d) => duringIds.has(d.id))
      .reduce(
        (min, d) => {
          const lsn = parseLsn(d.headers['outboxd.lsn'] ?? '0/0');
          return min === null || lsn < min ? lsn : min;
        },
        null as bigint | null,
      );
    expect(firstDuringCommit).not.toBeNull();
    expect(maxConfirmed).toBeLessThanOrEqual(firstDuringCommit as bigint);
    const firstIds = new Set(first.map((r) => r.id));
    // Sequence numbers restart with each writeOutbox call; check the first batch's order.
    expect(orderAndDuplicates(b.reader.delivered().filter((d) => firstIds.has(d.id))).violations).toEqual([]);
    expect(relay.stderr).not.toContain(':secret@');
    expect((await relay.http('/metrics')).body).not.toContain('secret');
  }, 300_000);
});

describe.each(['kafka', 'rabbitmq'] as SinkKind[])('Postgres restarts → %s', (kind) => {
  for (const mode of ['fast', 'immediate'] as const) {
    it(`reconnects after a ${mode} shutdown mid-stream and resumes from the slot without loss`, async () => {
      await using server = await startPostgres(15);
      await using b = await bundle({ kind, pgUrl: server.url });
      const relay = b.start();
      await relay.ready();
      const before = await writeOutbox(b.db.client, { total: 4_000, keys: 100, types: b.types });
      const t0 = Date.now();
      await server.stop(mode);
      const stopMs = Date.now() - t0;
      await until('not ready while Postgres is down', async () => (await relay.http('/readyz')).status === 503, 20_000);
      await sleep(1_500); // pacing: the outage goes on while the relay retries, not a wait for anything
      await server.start();
      await b.db.reconnect();
      const after = await writeOutbox(b.db.client, { total: 2_000, keys: 100, types: b.types });
      await relay.ready(60_000);
      await waitDelivered(
        b.reader,
        [...before, ...after].map((r) => r.id),
      );
      const beforeIds = new Set(before.map((r) => r.id));
      expect(orderAndDuplicates(b.reader.delivered().filter((d) => beforeIds.has(d.id))).violations).toEqual([]);
      expect(await relay.metric('outboxd_reconnects_total', { target: 'postgres' })).toBeGreaterThanOrEqual(1);
      process.stdout.write(`[pg ${mode} ${kind}] server stop took ${stopMs} ms\n`);
      // A fast shutdown waits for walsenders to be confirmed up to the end: it must not hang.
      if (mode === 'fast') expect(stopMs).toBeLessThan(8_000);
    });
  }
});
