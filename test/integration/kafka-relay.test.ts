import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PG_MAJORS } from '../harness/postgres.js';
import { RelayProcess, TestDb, TopicReader, orderAndDuplicates, ordered, kafkaConfig, until, writeConfig, writeOutbox } from './support.js';
import { pgUrl, kafkaBrokers } from '../harness/services.js';

/**
 * The relay end to end: the real `outboxd` CLI between a real Postgres and a real Kafka broker,
 * read back with an independent kafkajs consumer. The core test runs on every supported
 * Postgres major: 14 (which sends empty transactions) to 18 (what new users install).
 */
const servers = PG_MAJORS.map((version) => ({ version, url: () => pgUrl(version) }));

/** A database, a topic reader and a config for one test; `await using` cleans them all up. */
async function setup(serverUrl: string, extra = '') {
  const stack = new AsyncDisposableStack();
  const db = stack.use(await new TestDb(serverUrl).create());
  const suffix = db.name.slice(2, 8);
  const types = [`order_${suffix}`, `customer_${suffix}`];
  const brokers = await kafkaBrokers();
  const reader = stack.use(new TopicReader(brokers));
  await reader.createTopics(types.map((t) => `outbox.event.${t}`));
  const cfg = stack.use(await writeConfig(kafkaConfig({ pgUrl: db.url, slot: db.slot, brokers, extra })));
  // Relays started here are killed first (the stack unwinds in reverse).
  const start = () => stack.use(new RelayProcess(cfg.file, cfg.port));
  return { db, types, reader, cfg, start, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

describe.each(servers)('Postgres $version → Kafka', ({ url }) => {
  it('delivers 10,000 rows over 200 keys exactly once, in per-key commit order, keyed by aggregateid', async () => {
    await using t = await setup(await url());
    const { db, types, reader, start } = t;
    const relay = start();
    await relay.ready();
    await reader.start(types.map((t) => `outbox.event.${t}`));
    const rows = await writeOutbox(db.client, { total: 10_000, keys: 200, types });
    await reader.waitForIds(rows.map((r) => r.id));
    // Everything the topics hold has been read: a duplicate would be among it.
    await reader.waitCaughtUp(types.map((t) => `outbox.event.${t}`));

    const byId = new Map(rows.map((r) => [r.id, r]));
    expect(reader.messages).toHaveLength(rows.length);
    for (const m of reader.messages) {
      const row = byId.get(m.headers.id ?? '');
      expect(row, `unknown id ${m.headers.id}`).toBeDefined();
      if (!row) continue;
      expect(m.topic).toBe(`outbox.event.${row.aggregatetype}`);
      expect(m.key).toBe(row.aggregateid);
      expect(m.headers.type).toBe('Tested');
      expect(m.headers['outboxd.lsn']).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
      expect(Number(m.headers['outboxd.xid'])).toBeGreaterThan(0);
      expect(JSON.parse(m.value)).toEqual({ seq: row.seq, key: row.aggregateid, pad: 'x'.repeat(200) });
    }
    const { duplicates, violations } = orderAndDuplicates(reader.messages.map(ordered));
    expect(violations).toEqual([]);
    expect(duplicates).toBe(0);

    // A key always maps to one partition (murmur2 on the key).
    const partitions = new Map<string, Set<number>>();
    for (const m of reader.messages)
      partitions.set(`${m.topic}/${m.key}`, (partitions.get(`${m.topic}/${m.key}`) ?? new Set()).add(m.partition));
    expect([...partitions.values()].every((s) => s.size === 1)).toBe(true);

    // The slot is confirmed past the last transaction once the broker confirmed it.
    const { rows: lsn } = await db.client.query<{ done: boolean }>(
      `SELECT confirmed_flush_lsn >= (SELECT pg_current_wal_insert_lsn()) - 1000000 AS done FROM pg_replication_slots WHERE slot_name = $1`,
      [db.slot],
    );
    expect(lsn[0]?.done).toBe(true);
    expect(await relay.metric('outboxd_messages_published_total')).toBe(10_000);
    // The commit → ack histogram (counted outside prom-client, observability/counting-histogram.ts)
    // holds one observation per published event, each in a bucket that counts it.
    expect(await relay.metric('outboxd_commit_to_ack_seconds_count')).toBe(10_000);
    expect(await relay.metric('outboxd_commit_to_ack_seconds_bucket', { le: '+Inf' })).toBe(10_000);
    expect(await relay.metric('outboxd_commit_to_ack_seconds_sum')).toBeGreaterThan(0);

    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('relays transactional logical decoding messages like rows, in statement order', async () => {
    await using t = await setup(await url());
    const { db, types, reader, start } = t;
    const relay = start();
    await relay.ready();
    await reader.start(types.map((t) => `outbox.event.${t}`));
    const ids = [randomUUID(), randomUUID(), randomUUID()];
    await db.client.query('BEGIN');
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, correlation_id) VALUES ($1, $2, 'agg-1', 'Created', '{"seq": 1}', 'corr-1')`,
      [ids[0], types[0]],
    );
    await db.client.query(`SELECT pg_logical_emit_message(true, 'outbox', $1)`, [
      JSON.stringify({
        id: ids[1],
        aggregatetype: types[0],
        aggregateid: 'agg-1',
        type: 'Updated',
        payload: { seq: 2 },
        headers: { tenant: 't-9' },
        correlation_id: 'corr-1',
      }),
    ]);
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, 'agg-1', 'Closed', '{"seq": 3}')`,
      [ids[2], types[0]],
    );
    // Messages with another prefix, and non-transactional ones, are not outbox events.
    await db.client.query(`SELECT pg_logical_emit_message(true, 'other', '{"id":"nope"}')`);
    await db.client.query('COMMIT');
    await db.client.query(`SELECT pg_logical_emit_message(false, 'outbox', $1)`, [
      JSON.stringify({ id: 'nontx', aggregatetype: types[0], aggregateid: 'agg-1', payload: {} }),
    ]);
    await reader.waitForIds(ids);
    // The relay has read (and ignored) the other two, and the reader has everything the topics hold.
    await until('both ignored', async () => (await relay.metric('outboxd_changes_ignored_total')) >= 2, 10_000);
    await reader.waitCaughtUp(types.map((t) => `outbox.event.${t}`));
    expect(reader.messages.map((m) => m.headers.id)).toEqual(ids);
    const msg = reader.messages[1];
    expect(msg?.key).toBe('agg-1');
    expect(msg?.headers).toMatchObject({ type: 'Updated', tenant: 't-9', correlation_id: 'corr-1' });
    expect(JSON.parse(msg?.value ?? '')).toEqual({ seq: 2 });
    expect(orderAndDuplicates(reader.messages.map(ordered)).violations).toEqual([]);
    expect(await relay.metric('outboxd_changes_ignored_total', { kind: 'foreign_message' })).toBeGreaterThanOrEqual(1);
    expect(await relay.metric('outboxd_changes_ignored_total', { kind: 'non_transactional_message' })).toBe(1);
  });
});

describe('observability', () => {
  it('serves the metrics SPEC.md lists, and readiness that follows the relay state', async () => {
    await using t = await setup(await pgUrl(15));
    const { start } = t;
    const relay = start();
    await relay.ready();
    const { status, body } = await relay.http('/metrics');
    expect(status).toBe(200);
    for (const name of [
      'outboxd_messages_received_total',
      'outboxd_messages_published_total',
      'outboxd_publish_errors_total',
      'outboxd_publish_duration_seconds',
      'outboxd_commit_to_ack_seconds',
      'outboxd_inflight_messages',
      'outboxd_inflight_bytes',
      'outboxd_replication_lag_bytes',
      'outboxd_slot_retained_wal_bytes',
      'outboxd_connection_up',
      'outboxd_leader',
      'outboxd_poison_messages_total',
      'outboxd_dead_lettered_total',
      'outboxd_build_info',
    ]) {
      expect(body, name).toContain(`# TYPE ${name} `);
    }
    expect(await relay.metric('outboxd_leader')).toBe(1);
    expect(await relay.metric('outboxd_connection_up', { target: 'postgres' })).toBe(1);
    expect(await relay.metric('outboxd_connection_up', { target: 'kafka' })).toBe(1);
    expect((await relay.http('/livez')).status).toBe(200);
    expect((await relay.http('/readyz')).body).toMatch(/^ok: streaming/);
    expect((await relay.http('/nope')).status).toBe(404);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });
});

describe('Postgres 15 → Kafka under faults', () => {
  it('loses nothing when the relay is SIGKILLed mid-stream and restarted', async () => {
    // A long linger keeps messages in flight, so the kill lands while some are unconfirmed.
    await using t = await setup(await pgUrl(15), 'pipeline:\n  linger: 300ms\n');
    const { db, types, reader, start } = t;
    let relay = start();
    await relay.ready();
    await reader.start(types.map((t) => `outbox.event.${t}`));
    let killed = false;
    const writing = writeOutbox(db.client, {
      total: 10_000,
      keys: 200,
      types,
      onProgress: (n) => {
        if (!killed && n >= 4_000) {
          killed = true;
          relay.kill('SIGKILL');
        }
      },
    });
    const rows = await writing;
    expect(await relay.exited).toBe(-1);
    const before = reader.messages.length;
    relay = start();
    await relay.ready();
    await reader.waitForIds(rows.map((r) => r.id));
    const { duplicates, violations } = orderAndDuplicates(reader.messages.map(ordered));
    expect(violations).toEqual([]);
    // Duplicates are allowed (at-least-once) but bounded by what could have been in flight.
    expect(duplicates).toBeLessThanOrEqual(20_000 + 2_000);
    expect(new Set(reader.messages.map((m) => m.headers.id)).size).toBe(rows.length);
    process.stdout.write(`[restart] delivered before kill: ${before}, duplicates after restart: ${duplicates}\n`);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('keeps confirming the slot while the outbox is idle and another table takes 50 MB of writes', async () => {
    await using t = await setup(await pgUrl(15));
    const { db, start } = t;
    await db.client.query('CREATE TABLE busy (id bigserial PRIMARY KEY, filler text NOT NULL)');
    const relay = start();
    await relay.ready();
    const first = await until('slot', () => db.slotInfo().then((s) => s ?? undefined));
    const seen: bigint[] = [first.confirmed];
    // 50 MB of WAL from rows the publication does not cover: ~50 x 1 MB transactions.
    for (let i = 0; i < 50; i++) {
      await db.client.query(`INSERT INTO busy (filler) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 1000) g`);
      if (i % 10 === 9) seen.push((await db.slotInfo())?.confirmed ?? 0n);
    }
    const { rows } = await db.client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
    const [hi, lo] = (rows[0]?.lsn ?? '0/0').split('/').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
    const end = (hi << 32n) | lo;
    expect(end - first.confirmed).toBeGreaterThan(45_000_000n);
    // The slot catches up to (near) the end of the writes without a single outbox row.
    const last = await until(
      'slot to advance past the writes',
      async () => {
        const s = await db.slotInfo();
        return s && s.confirmed >= end - 1_000_000n ? s : undefined;
      },
      30_000,
      250,
    );
    expect(last.confirmed).toBeGreaterThan(first.confirmed);
    // It moved during the writes too, not only at the end.
    expect(seen.filter((lsn, i) => i > 0 && lsn > (seen[i - 1] as bigint)).length).toBeGreaterThanOrEqual(2);
    // Heartbeats (every 2 s here) are written and read back through the stream, and publish nothing.
    await until('a heartbeat read back', async () => (await relay.metric('outboxd_heartbeats_received_total')) >= 1, 10_000);
    expect(await relay.metric('outboxd_heartbeats_total')).toBeGreaterThanOrEqual(1);
    expect(await relay.metric('outboxd_messages_published_total')).toBe(0);
  });

  it('stops gracefully on SIGTERM: drains, confirms the slot, exits 0', async () => {
    await using t = await setup(await pgUrl(15));
    const { db, types, reader, start } = t;
    const relay = start();
    await relay.ready();
    await reader.start(types.map((t) => `outbox.event.${t}`));
    const rows = await writeOutbox(db.client, { total: 2_000, keys: 50, types });
    await reader.waitForIds(rows.map((r) => r.id));
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
    const slot = await db.slotInfo();
    expect(slot?.active).toBe(false);
    const { rows: pos } = await db.client.query<{ behind: string }>(
      `SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::text AS behind FROM pg_replication_slots WHERE slot_name = $1`,
      [db.slot],
    );
    // Only WAL written after the last outbox commit (heartbeats, other activity) may remain.
    expect(Number(pos[0]?.behind)).toBeLessThan(1_000_000);
    expect(relay.logLines().some((l) => l.msg === 'outboxd stopped' && l.drained === true)).toBe(true);
  });

  it('exits with code 4 and never recreates a slot that was dropped while it was down', async () => {
    await using t = await setup(await pgUrl(15));
    const { db, start } = t;
    const relay = start();
    await relay.ready();
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
    await db.client.query('SELECT pg_drop_replication_slot($1)', [db.slot]);
    const again = start();
    expect(await again.exited).toBe(4);
    expect(again.stderr).toMatch(/replication slot s_\w+ is gone/);
    expect(await db.slotInfo()).toBeNull();
  });
});
