import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import type pg from 'pg';
import { MAIN, until, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, dropSlotUnderRelay, markerOf, orderAndDuplicates, steadyWriter, uuid, waitDelivered } from './fixtures.js';

/**
 * postgres.onLostSlot: recover-from-outbox. The slot is dropped under a running relay while rows
 * are written: the relay must create a new slot, publish again from the table every row the lost
 * slot may not have delivered, then stream. Every id arrives; duplicates are bounded and counted;
 * per-key order holds after dedupe. Real Postgres, real Kafka, the relay as a process.
 */

const RECOVER = '  onLostSlot: recover-from-outbox\n';
/** Epochs every 300 ms (pruning itself stays off): the marker's confirmed epoch stays fresh. */
const EPOCHS = (interval: string) => `  prune:\n    mode: off\n    interval: ${interval}\n`;

/** The bundle's slot's confirmed epoch xid in the marker, or undefined. */
async function epochOf(b: Bundle): Promise<string | undefined> {
  return (await markerOf(b)).epochs.get(b.db.slot)?.xid;
}

describe('lost-slot recovery from the outbox', () => {
  it('a slot dropped under a running relay while rows are written: every id arrives, duplicates bounded and counted, per-key order holds', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: RECOVER, outboxExtra: EPOCHS('300ms') });
    const relay = b.start();
    await relay.ready();
    const writer = steadyWriter(b, 20, 4);
    await until('a confirmed epoch in the marker', async () => (await epochOf(b)) !== undefined, 30_000, 100);
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
      // Commit only once the relay's new slot waits for this transaction to end.
      const gapPid = (await gapTx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]?.pid;
      await until(
        'the new slot to wait for the open transaction',
        async () =>
          (await b.db.client.query('SELECT 1 FROM pg_stat_activity WHERE $1::int = ANY(pg_blocking_pids(pid))', [gapPid])).rows.length > 0,
        30_000,
        20,
      );
      await gapTx.query('COMMIT');
    } finally {
      await gapTx.end();
    }
    await until('recovered', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 100);
    const recoveredS = (performance.now() - droppedAt) / 1000;
    // Writing goes on after the recovery: 20 more rows.
    const writtenAtRecovery = writer.ids.length;
    await until('rows written after the recovery', async () => writer.ids.length >= writtenAtRecovery + 20, 30_000, 20);
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
    const m = await markerOf(b);
    expect(m.recoveries.size).toBe(0);
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
    await until('a confirmed epoch in the marker', async () => (await epochOf(b)) !== undefined, 30_000, 100);
    // Rows after the epoch, for the recovery to publish again.
    const writtenAtEpoch = writer.ids.length;
    await until('rows written after the epoch', async () => writer.ids.length >= writtenAtEpoch + 50, 30_000, 20);
    await writer.stop();
    // The relay stops; the slot goes while it is down; the marker keeps the epoch.
    first.kill('SIGKILL');
    await first.exited;
    // Its walsender may not have noticed yet that the relay is gone: terminate it, then drop.
    await dropSlotUnderRelay(b);
    // Simulate a crash right after the new slot was created, as a relay of the previous version
    // left it (the v1 marker: one confirmedXid, one "recovering"): the upgrade must finish it.
    const epoch = (await markerOf(b)).epochs.get(b.db.slot);
    const v1 = {
      slots: [b.db.slot],
      confirmedXid: epoch?.xid,
      confirmedSince: epoch?.since,
      recovering: { slot: b.db.slot, fromXid: epoch?.xid, since: epoch?.since, reason: 'dropped' },
    };
    await b.db.client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [b.db.slot]);
    await b.db.client.query(`COMMENT ON PUBLICATION outboxd IS ${quote(`outboxd:${JSON.stringify(v1)}`)}`);
    expect(status(b)).toMatchObject({ exists: true, recovering: true, confirmedEpoch: { xid: epoch?.xid } });
    const second = b.startOn(b.httpPort);
    await second.ready();
    await until('recovered', async () => second.stderr.includes('lost-slot recovery done'), 60_000, 100);
    await waitDelivered(b.reader, writer.ids, 60_000);
    expect(await second.metric('outboxd_recovered_messages_total')).toBeGreaterThan(0);
    expect((await markerOf(b)).recoveries.size).toBe(0);
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

describe('lost-slot recovery reads the snapshot its new slot exported', () => {
  it('a transaction whose commit lies before the new slot’s consistent point, still in a synchronous-replication wait when recovery reads, arrives', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: RECOVER, outboxExtra: EPOCHS('300ms') });
    const { Client } = (await import('pg')).default;
    const open = async () => {
      const c = new Client({ connectionString: b.db.url });
      await c.connect();
      return c;
    };
    const [b1, b2, u, watch] = await Promise.all([open(), open(), open(), open()]);
    // Commits wait for a synchronous standby only in the session that asks (synchronous_commit
    // on); every other session (the relay's, the test's) commits locally.
    await watch.query(`ALTER SYSTEM SET synchronous_commit = 'local'`);
    await watch.query(`ALTER SYSTEM SET synchronous_standby_names = 'nobody_answers'`);
    await watch.query('SELECT pg_reload_conf()');
    try {
      const first = b.start();
      await first.ready();
      const before = await writeOutbox(b.db.client, { total: 20, keys: 2, types: b.types });
      await waitDelivered(
        b.reader,
        before.map((r) => r.id),
      );
      await until('a confirmed epoch in the marker', async () => (await epochOf(b)) !== undefined, 30_000, 100);
      first.kill('SIGKILL');
      await first.exited;
      await dropSlotUnderRelay(b);

      /** Resolves once some session waits for transaction `xid`'s lock: the slot's creation. */
      const creationWaitsFor = (xid: string) =>
        until(
          `slot creation waiting for transaction ${xid}`,
          async () =>
            (
              await watch.query(`SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted AND transactionid::text = $1`, [
                xid,
              ])
            ).rows.length > 0,
          30_000,
          20,
        );
      const xidOf = async (c: pg.Client) => {
        await c.query('BEGIN');
        return (await c.query<{ x: string }>('SELECT pg_current_xact_id()::text AS x')).rows[0]?.x as string;
      };
      // B1 runs: the new slot's creation must wait for it (its first phase).
      const x1 = await xidOf(b1);
      const relay = b.startOn(b.httpPort);
      await creationWaitsFor(x1);
      // B2 starts, then B1 ends: the creation reaches its second phase and waits for B2.
      const x2 = await xidOf(b2);
      await b1.query('COMMIT');
      await creationWaitsFor(x2);
      // U writes its rows and commits: its commit record is in the WAL, but it waits for the
      // synchronous standby, still in the proc array, invisible to any snapshot taken now.
      await u.query(`SET synchronous_commit = 'on'`);
      const gap: string[] = Array.from({ length: 5 }, () => uuid());
      const committing = u.query(
        `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) SELECT x::uuid, $1, 'gap', 'T', '{}' FROM unnest($2::text[]) x`,
        [b.types[0], gap],
      );
      committing.catch(() => undefined);
      await until(
        'U waiting for the synchronous standby',
        async () =>
          (
            await watch.query(`SELECT 1 FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND pid = $1`, [
              (u as unknown as { processID: number }).processID,
            ])
          ).rows.length > 0,
        30_000,
        20,
      );
      // B2 ends: the slot is consistent after U's commit record, so it will never stream U.
      await b2.query('COMMIT');
      await until('recovered', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 50);
      // Only now does U end.
      await watch.query('ALTER SYSTEM RESET synchronous_standby_names');
      await watch.query('SELECT pg_reload_conf()');
      await committing;
      const after = await writeOutbox(b.db.client, { total: 5, keys: 1, types: b.types });
      await waitDelivered(b.reader, [...gap, ...after.map((r) => r.id)], 60_000).catch((err: Error) => {
        const got = new Set(b.reader.delivered().map((d) => d.id));
        const lost = gap.filter((id) => !got.has(id)).length;
        throw new Error(
          `${err.message}: ${lost} of U's ${gap.length} rows and ${after.filter((r) => !got.has(r.id)).length} later rows missing`,
        );
      });
      // U's rows came from recovery, read in the slot's own snapshot.
      for (const d of b.reader.delivered().filter((x) => gap.includes(x.id))) expect(d.headers['outboxd-replay']).toMatch(/^recover-/);
    } finally {
      await watch.query('ALTER SYSTEM RESET synchronous_standby_names').catch(() => undefined);
      await watch.query('ALTER SYSTEM RESET synchronous_commit').catch(() => undefined);
      await watch.query('SELECT pg_reload_conf()').catch(() => undefined);
      await Promise.all([b1, b2, u, watch].map((c) => c.end().catch(() => undefined)));
    }
  });
});
