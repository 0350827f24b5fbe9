import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { type PrimaryWithStandby, FrontDoor, startPrimaryWithStandby } from '../harness/standby.js';
import { MAIN, sleep, until } from '../integration/support.js';
import { type Bundle, bundle, orderAndDuplicates, uuid, waitDelivered } from './fixtures.js';

/**
 * A real PostgreSQL 17 failover under a running relay: a primary and a physical standby, the
 * relay on the multi-host URL (primary first, target_session_attrs=read-write) with
 * postgres.failover, rows written all along; the primary is stopped hard and the standby
 * promoted. With the slot synchronised to the standby the relay carries on from it and every
 * id arrives; without, it must not start over from "now".
 */

interface Scene {
  cluster: PrimaryWithStandby;
  door: FrontDoor;
  b: Bundle;
}

/**
 * A primary and standby, a front door the test's own clients go through (moved to the new
 * primary at the failover, as an HA manager moves a service address), and a RabbitMQ bundle whose
 * relay uses the multi-host URL. `await using` tears it all down, relay first.
 */
async function scene(o: { syncSlots: boolean; onLostSlot: 'exit' | 'recover-from-outbox' }): Promise<Scene & AsyncDisposable> {
  const stack = new AsyncDisposableStack();
  try {
    const cluster = stack.use(await startPrimaryWithStandby(17, { syncSlots: o.syncSlots }));
    const door = stack.use(await new FrontDoor(cluster.primary).start());
    const b = stack.use(
      await bundle({
        kind: 'rabbitmq',
        pgUrl: door.urlFor(cluster.primary.url),
        // Recovery needs a confirmed epoch in the marker: record one every 300 ms (no pruning).
        outboxExtra: o.onLostSlot === 'recover-from-outbox' ? '  prune:\n    mode: off\n    interval: 300ms\n' : '',
        pgUrlRewrite: (dbUrl) => {
          const u = new URL(dbUrl);
          return `postgres://${u.username}:${u.password}@${cluster.primary.host}:${cluster.primary.port},${cluster.standby.host}:${cluster.standby.port}${u.pathname}?target_session_attrs=read-write`;
        },
      }),
    );
    addPostgresKeys(b, `failover: true\n  onLostSlot: ${o.onLostSlot}`);
    const owned = stack.move();
    return { cluster, door, b, [Symbol.asyncDispose]: () => owned.disposeAsync() };
  } catch (err) {
    await stack.disposeAsync();
    throw err;
  }
}

/** The bundle's config has no postgres keys of ours: adds them beside its slot. */
function addPostgresKeys(b: Bundle, yaml: string): void {
  const text = readFileSync(b.configFile, 'utf8');
  writeFileSync(b.configFile, text.replace(/^( {2}slot: .*)$/m, `$1\n  ${yaml}`));
}

/** Stops the primary hard, promotes the standby and moves the front door to it. */
async function failover(s: Scene): Promise<{ stoppedAt: number; promotedAt: number }> {
  const times = await s.cluster.failover();
  s.door.pointTo(s.cluster.standby);
  return times;
}

/**
 * One row every `everyMs` over 10 keys (per-key sequence in the payload), through the front door,
 * reconnecting when the primary goes away. `acknowledged`: rows whose commit returned; a row
 * whose commit failed may or may not exist, and is counted in `uncertain`.
 */
function writer(b: Bundle, everyMs = 20) {
  const acknowledged: Array<{ id: string; at: number }> = [];
  const seqs = new Map<string, number>();
  let uncertain = 0;
  let writing = true;
  const done = (async () => {
    for (let i = 0; writing; i++) {
      const key = `k${i % 10}`;
      const seq = (seqs.get(key) ?? 0) + 1;
      const id = uuid();
      try {
        await b.db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, 'T', $4)`, [
          id,
          b.types[0],
          key,
          JSON.stringify({ seq }),
        ]);
        acknowledged.push({ id, at: Date.now() });
        seqs.set(key, seq);
        await sleep(everyMs);
      } catch {
        uncertain++;
        // The row may exist: the key's next row takes the next number either way.
        seqs.set(key, seq);
        await until('the writer to reconnect', () => b.db.reconnect().then(() => true), 60_000, 100, { tolerateErrors: true });
      }
    }
  })();
  return {
    acknowledged,
    uncertain: () => uncertain,
    stop: async () => {
      writing = false;
      await done;
    },
  };
}

/** The standby's copy of the slot, once synchronised and persistent (PG17 slot sync). */
async function syncedCopy(cluster: PrimaryWithStandby, slot: string): Promise<bigint | null> {
  const [r] = await cluster.queryStandby<{ c: string | null }>(
    'SELECT confirmed_flush_lsn::text AS c FROM pg_replication_slots WHERE slot_name = $1 AND synced AND NOT temporary',
    [slot],
  );
  return r?.c ? lsn(r.c) : null;
}

/** pg_replication_slots.failover of the bundle's slot, on the primary. */
async function failoverFlag(b: Bundle): Promise<boolean | undefined> {
  const { rows } = await b.db.client.query<{ failover: boolean }>('SELECT failover FROM pg_replication_slots WHERE slot_name = $1', [
    b.db.slot,
  ]);
  return rows[0]?.failover;
}

/** `outboxd validate --connect` on the scene's config: its exit code and its check lines. */
async function validateConnect(b: Bundle): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await promisify(execFile)(process.execPath, [MAIN, 'validate', '-c', b.configFile, '--connect']);
    return { code: 0, stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string };
    return { code: e.code ?? -1, stdout: e.stdout ?? '' };
  }
}

function lsn(text: string): bigint {
  const [hi, lo] = text.split('/').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
  return (hi << 32n) | lo;
}

describe('failover (PostgreSQL 17, failover slots) → rabbitmq', () => {
  it('primary stopped hard, standby promoted: the relay finds the new primary, continues from the synchronised slot, no id lost', async () => {
    await using s = await scene({ syncSlots: true, onLostSlot: 'exit' });
    const { b, cluster } = s;
    // A slot made before failover was configured: the relay alters it (ALTER_REPLICATION_SLOT).
    await b.db.client.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [b.db.slot]);
    const relay = b.start();
    await relay.ready();
    expect(await failoverFlag(b)).toBe(true);
    const validate = await validateConnect(b);
    expect(validate.code).toBe(0);
    for (const check of ['failover hosts', 'synchronized_standby_slots', 'standbys', 'failover slot']) {
      expect(validate.stdout).toMatch(new RegExp(`^ok\\s+${check}: `, 'm'));
    }
    expect(validate.stdout).toMatch(
      new RegExp(`^(ok|warn)\\s+standby ${cluster.standby.host}:${cluster.standby.port}: sync_replication_slots, `, 'm'),
    );
    const w = writer(b);
    // A transaction that ends past `wal0` commits after `deliveredAt0` was counted, and the
    // resumed slot starts at or past wal0 (the sync is waited for below): it can re-send only
    // messages delivered after that count. That bounds the duplicates.
    await sleep(1_000);
    const deliveredAt0 = b.reader.delivered().length;
    const wal0 = await b.db.walLsn();
    await until(
      'the slot to be synchronised to the standby past the current WAL position',
      async () => {
        // A running-xacts record lets the standby's copy persist and move sooner than the
        // bgwriter's 15 s would.
        await b.db.client.query('SELECT pg_log_standby_snapshot()');
        const c = await syncedCopy(cluster, b.db.slot);
        return c !== null && c >= wal0;
      },
      45_000,
      200,
    );
    const deliveredBeforeFailover = b.reader.delivered().length;
    const { stoppedAt, promotedAt } = await failover(s);
    const afterPromotion = () => new Set(w.acknowledged.filter((r) => r.at > promotedAt).map((r) => r.id));
    const firstNewMs = await until(
      'a row written after the promotion to arrive',
      async () => {
        const fresh = afterPromotion();
        return b.reader.delivered().some((d) => fresh.has(d.id)) && Date.now() - promotedAt;
      },
      60_000,
      25,
    );
    // Writing goes on against the new primary for a while.
    await sleep(3_000);
    await w.stop();
    expect(relay.child.exitCode).toBeNull();

    const onNewPrimary = new Set((await b.db.client.query<{ id: string }>('SELECT id::text FROM public.outbox')).rows.map((r) => r.id));
    const acknowledgedMissing = w.acknowledged.filter((r) => !onNewPrimary.has(r.id)).length;
    await waitDelivered(b.reader, onNewPrimary, 30_000).catch(() => undefined);
    const delivered = b.reader.delivered();
    const deliveredIds = new Set(delivered.map((d) => d.id));
    const lost = [...onNewPrimary].filter((id) => !deliveredIds.has(id)).length;
    const { duplicates, violations } = orderAndDuplicates(delivered);
    const streamingAgain = relay
      .logLines()
      .map((l) => (l.msg === 'streaming' ? Date.parse(String(l.time)) : 0))
      .find((t) => t > stoppedAt);
    const hosts = relay
      .logLines()
      .filter((l) => l.msg === 'replication connection opened')
      .map((l) => l.host);
    console.log(
      `[failover] primary stopped → promoted (pg_promote returned) ${promotedAt - stoppedAt} ms → relay streaming again ${(streamingAgain ?? Number.NaN) - stoppedAt} ms after the stop (relay log; ${(streamingAgain ?? Number.NaN) - promotedAt} ms after pg_promote returned, which polls every 100 ms) → first row written after the promotion delivered ${firstNewMs} ms after it; rows on the new primary ${onNewPrimary.size} (acknowledged ${w.acknowledged.length}, commit uncertain ${w.uncertain()}, acknowledged but missing from the database ${acknowledgedMissing}); lost ${lost}; duplicates ${duplicates} (bound ${deliveredBeforeFailover - deliveredAt0}); replication hosts ${hosts.join(' → ')}`,
    );
    expect(acknowledgedMissing).toBe(0);
    expect(lost).toBe(0);
    expect(duplicates).toBeLessThanOrEqual(deliveredBeforeFailover - deliveredAt0);
    expect(violations).toEqual([]);
    expect(streamingAgain).toBeDefined();
    expect(hosts.at(0)).toBe(`${cluster.primary.host}:${cluster.primary.port}`);
    expect(hosts.at(-1)).toBe(`${cluster.standby.host}:${cluster.standby.port}`);
  });

  it('a slot not synchronised before the failover, onLostSlot exit: exit 4 naming the slot and the new primary, no new slot', async () => {
    await using s = await scene({ syncSlots: false, onLostSlot: 'exit' });
    const { b, cluster } = s;
    const relay = b.start();
    await relay.ready();
    expect(await failoverFlag(b)).toBe(true);
    const validate = await validateConnect(b);
    expect(validate.code).toBe(1);
    expect(validate.stdout).toMatch(
      new RegExp(
        `^fail\\s+standby ${cluster.standby.host}:${cluster.standby.port}: set sync_replication_slots = on; no copy of ${b.db.slot} yet$`,
        'm',
      ),
    );
    const w = writer(b);
    await until('rows to be delivered before the failover', async () => b.reader.delivered().length >= 20, 30_000);
    await failover(s);
    expect(await relay.exited).toBe(4);
    await w.stop();
    const fatal = relay.logLines().find((l) => l.level === 'fatal');
    console.log(`[failover, not synchronised] ${String(fatal?.msg)}`);
    expect(String(fatal?.msg)).toMatch(
      new RegExp(
        `^replication slot ${b.db.slot} is missing on ${cluster.standby.host}:${cluster.standby.port}, a promoted server \\(timeline 2\\): it was not synchronised to it before the failover .* outboxd will not recreate it\\. See docs/runbook\\.md#failover$`,
      ),
    );
    expect(await cluster.queryStandby('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [b.db.slot])).toEqual([]);
  });

  it('a slot not synchronised before the failover, onLostSlot recover-from-outbox: a new slot on the new primary, every acknowledged id arrives', async () => {
    await using s = await scene({ syncSlots: false, onLostSlot: 'recover-from-outbox' });
    const { b } = s;
    const relay = b.start();
    await relay.ready();
    const w = writer(b);
    await until(
      'rows delivered and an epoch recorded before the failover',
      async () => {
        const { rows } = await b.db.client.query<{ c: string | null }>(
          `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
        );
        return b.reader.delivered().length >= 20 && (rows[0]?.c ?? '').includes('"epochs"');
      },
      30_000,
    );
    const { stoppedAt } = await failover(s);
    await until('recovered on the new primary', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 50);
    const recoveredAfterMs = Date.now() - stoppedAt;
    await sleep(1_000);
    await w.stop();
    const ids = w.acknowledged.map((a) => a.id);
    await waitDelivered(b.reader, ids, 60_000);
    const delivered = b.reader.delivered();
    const got = new Set(delivered.map((d) => d.id));
    const lost = ids.filter((id) => !got.has(id)).length;
    const { violations, duplicates } = orderAndDuplicates(delivered);
    const recovered = await relay.metric('outboxd_recovered_messages_total');
    console.log(
      `[failover, not synchronised, recover-from-outbox] stop → recovery done ${recoveredAfterMs} ms; ${ids.length} acknowledged, lost ${lost}, duplicates ${duplicates}, published again by recovery ${recovered}, uncertain writes ${w.uncertain()}`,
    );
    expect(lost).toBe(0);
    expect(violations).toEqual([]);
    expect(recovered).toBeGreaterThan(0);
    expect(duplicates).toBeLessThanOrEqual(recovered);
    expect(relay.child.exitCode).toBeNull();
    expect(relay.stderr).toContain('"reason":"not-synchronised"');
  });

  it('postgres.failover on PostgreSQL 15: run exits 3 and validate fails, each naming postgres.failover and the version', async () => {
    await using b = await bundle({ kind: 'rabbitmq' });
    addPostgresKeys(b, 'failover: true');
    const validate = await validateConnect(b);
    expect(validate.stdout).toMatch(
      /^fail\s+failover slots: postgres\.failover needs PostgreSQL 17 or later; 127\.0\.0\.1:\d+ runs 15\.\d+$/m,
    );
    const relay = b.start();
    expect(await relay.exited).toBe(3);
    expect(String(relay.logLines().find((l) => l.level === 'fatal')?.msg)).toMatch(
      /^config postgres\.failover: needs PostgreSQL 17 or later \(failover slots\); 127\.0\.0\.1:\d+ runs 15\.\d+: set postgres\.failover: false$/,
    );
  });
});
