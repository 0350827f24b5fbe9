import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/logger.js';
import { identifySource, walInsertPoint } from '../../src/source/identity.js';
import { type PrimaryWithStandby, FrontDoor, startPrimaryWithStandby } from '../harness/standby.js';
import { MAIN, type OutboxRow, sleep, until, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, orderAndDuplicates, uuid, waitDelivered } from './fixtures.js';

/**
 * A real PostgreSQL 17 failover under a running relay: a primary and a physical standby, the
 * relay on the multi-host URL (primary first, target_session_attrs=read-write) with
 * postgres.failover, rows written all along; the primary is stopped hard and the standby
 * promoted. With the slot synchronised to the standby the relay carries on from it and every
 * id arrives; without, it must not start over from "now".
 *
 * Then a standby that was behind (issue 21, finding 3): asynchronous, cut off from the primary's
 * WAL while the relay goes on publishing, then promoted. Its timeline reuses LSNs the relay had
 * already passed on the old one; rows written there must all arrive, exactly once into Kafka and
 * at least once into RabbitMQ, on PostgreSQL 17 (failover slots) and 15 (lost-slot recovery).
 */

interface Scene {
  cluster: PrimaryWithStandby;
  door: FrontDoor;
  b: Bundle;
}

interface SceneOptions {
  syncSlots: boolean;
  onLostSlot: 'exit' | 'recover-from-outbox';
  /** Default 17. Before 17 there are no failover slots: postgres.failover stays off. */
  version?: 15 | 17;
  /** Default rabbitmq; kafka publishes exactly once. */
  kind?: 'rabbitmq' | 'kafka';
  /**
   * An asynchronous standby and no synchronized_standby_slots: the test can cut it off from the
   * primary's WAL (cluster.cutOff) while the relay goes on, so that it is promoted behind.
   */
  behind?: boolean;
}

/**
 * A primary and standby, a front door the test's own clients go through (moved to the new
 * primary at the failover, as an HA manager moves a service address), and a RabbitMQ (or Kafka
 * exactly-once) bundle whose relay uses the multi-host URL. `await using` tears it all down,
 * relay first.
 */
async function scene(o: SceneOptions): Promise<Scene & AsyncDisposable> {
  const stack = new AsyncDisposableStack();
  const version = o.version ?? 17;
  try {
    const cluster = stack.use(
      await startPrimaryWithStandby(version, {
        syncSlots: o.syncSlots,
        ...(o.behind ? { synchronous: false, standbySlots: false } : {}),
      }),
    );
    const door = stack.use(await new FrontDoor(cluster.primary).start());
    const b = stack.use(
      await bundle({
        kind: o.kind ?? 'rabbitmq',
        exactlyOnce: o.kind === 'kafka',
        pgUrl: door.urlFor(cluster.primary.url),
        // Recovery needs a confirmed epoch in the marker: record one every 300 ms (no pruning).
        outboxExtra: o.onLostSlot === 'recover-from-outbox' ? '  prune:\n    mode: off\n    interval: 300ms\n' : '',
        pgUrlRewrite: (dbUrl) => {
          const u = new URL(dbUrl);
          return `postgres://${u.username}:${u.password}@${cluster.primary.host}:${cluster.primary.port},${cluster.standby.host}:${cluster.standby.port}${u.pathname}?target_session_attrs=read-write`;
        },
      }),
    );
    addPostgresKeys(b, `failover: ${version >= 17}\n  onLostSlot: ${o.onLostSlot}`);
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
        await sleep(everyMs); // pacing: the write rate
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
    await until('rows flowing before the failover', async () => b.reader.delivered().length >= 20, 30_000, 50);
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
    // Writing goes on against the new primary for a while: 100 more rows acknowledged there.
    await until('100 rows acknowledged by the new primary', async () => afterPromotion().size >= 100, 60_000, 50);
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
    // Writing goes on after the recovery: 30 more rows acknowledged.
    const recoveredAt = Date.now();
    await until(
      'rows acknowledged after the recovery',
      async () => w.acknowledged.filter((r) => r.at > recoveredAt).length >= 30,
      30_000,
      50,
    );
    await w.stop();
    const ids = w.acknowledged.map((a) => a.id);
    // A timeout leaves `lost` to say how many are missing (asserted below, after the report).
    await waitDelivered(b.reader, ids, 60_000).catch(() => undefined);
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

/** The test's own client, through the front door, on the new primary. */
async function reconnectWriter(b: Bundle): Promise<void> {
  await until('the test client to reach the new primary', () => b.db.reconnect().then(() => true), 60_000, 100, { tolerateErrors: true });
}

/**
 * Issue 21, finding 3, up to the promotion: 200 rows delivered while the standby follows, then
 * `standbyHasIt` (what the standby must hold before the cut: a synchronised slot, a recorded
 * epoch), then the standby cut off from the WAL, and 1,000 more rows written on the primary alone
 * and delivered. Resolves with where the standby's WAL ends and the rows it never received.
 */
async function cutOffBehind(s: Scene, standbyHasIt: () => Promise<unknown>): Promise<{ cutAt: bigint; gone: OutboxRow[] }> {
  const { b, cluster } = s;
  const before = await writeOutbox(b.db.client, { total: 200, keys: 10, types: b.types, keyPrefix: 'before-' });
  await waitDelivered(
    b.reader,
    before.map((r) => r.id),
    60_000,
  );
  await standbyHasIt();
  const cutAt = await cluster.cutOff();
  const gone = await writeOutbox(b.db.client, { total: 1_000, keys: 10, types: b.types, keyPrefix: 'gone-' });
  await waitDelivered(
    b.reader,
    gone.map((r) => r.id),
    60_000,
  );
  return { cutAt, gone };
}

/** Waits until the standby holds a persistent synchronised copy of the slot (PG17). */
function syncedToStandby(s: Scene): () => Promise<unknown> {
  return () =>
    until(
      'the slot synchronised to the standby',
      async () => {
        await s.b.db.client.query('SELECT pg_log_standby_snapshot()');
        return (await syncedCopy(s.cluster, s.b.db.slot)) !== null;
      },
      45_000,
      200,
    );
}

/** The highest `outboxd.lsn` (commit LSN) among the delivered messages of `rows`: where the exactly-once checkpoint is. */
function lastCommitLsn(b: Bundle, rows: readonly OutboxRow[]): bigint {
  const ids = new Set(rows.map((r) => r.id));
  let max = 0n;
  for (const d of b.reader.delivered()) {
    const at = d.headers['outboxd.lsn'];
    if (ids.has(d.id) && at !== undefined && lsn(at) > max) max = lsn(at);
  }
  return max;
}

/** IDENTIFY_SYSTEM and TIMELINE_HISTORY on a replication connection to the new primary, and its WAL insert point with its origin. */
async function newPrimaryOrigin(b: Bundle, cluster: PrimaryWithStandby) {
  const url = new URL(cluster.standby.url);
  url.pathname = `/${b.db.name}`;
  const replication = new pg.Client({ connectionString: url.toString(), replication: 'database' } as pg.ClientConfig);
  replication.on('error', () => undefined);
  await replication.connect();
  try {
    const source = await identifySource(replication, createLogger('silent'));
    return { source, insert: await walInsertPoint(b.db.client) };
  } finally {
    await replication.end().catch(() => undefined);
  }
}

/** 50 rows on the new primary, one transaction each; resolves with them and the WAL position after the last. */
async function writeOnNewPrimary(b: Bundle): Promise<{ fresh: OutboxRow[]; end: bigint }> {
  const fresh = await writeOutbox(b.db.client, { total: 50, keys: 5, types: b.types, batch: 1, singles: 1, keyPrefix: 'fresh-' });
  return { fresh, end: await b.db.walLsn() };
}

/** Waits for every row of `rows`, failing at once should the relay exit; resolves with how often each arrived. */
async function arrivals(b: Bundle, relay: { child: { exitCode: number | null }; stderr: string }, rows: readonly OutboxRow[]) {
  const ids = new Set(rows.map((r) => r.id));
  const seen = () =>
    new Set(
      b.reader
        .delivered()
        .filter((d) => ids.has(d.id))
        .map((d) => d.id),
    );
  await until(`${ids.size} rows written on the new primary to arrive`, async () => seen().size === ids.size, 60_000, 250, {
    abortReason: () =>
      relay.child.exitCode !== null ? `outboxd exited with ${relay.child.exitCode}: ${relay.stderr.slice(-800)}` : undefined,
  }).catch((err: Error) => {
    throw new Error(`${err.message}: ${seen().size} of ${ids.size} arrived (issue 21, finding 3: the rest were skipped or lost)`);
  });
  const counts = new Map<string, number>();
  for (const d of b.reader.delivered()) if (ids.has(d.id)) counts.set(d.id, (counts.get(d.id) ?? 0) + 1);
  return counts;
}

describe('failover to a standby that was behind (issue 21, finding 3)', () => {
  it('PostgreSQL 17, exactly-once, failover slots without synchronized_standby_slots: every row written on the new primary arrives once, though its LSN is below the old timeline’s checkpoint', async () => {
    await using s = await scene({ syncSlots: true, onLostSlot: 'exit', kind: 'kafka', behind: true });
    const { b } = s;
    const relay = b.start();
    await relay.ready();
    const { cutAt, gone } = await cutOffBehind(s, syncedToStandby(s));
    const checkpoint = lastCommitLsn(b, gone);
    expect(checkpoint).toBeGreaterThan(cutAt);
    await failover(s);
    await reconnectWriter(b);
    // What the relay learns of the new primary: timeline 2, which left timeline 1 where the
    // standby's WAL ended; and the origin a pruning epoch taken there carries.
    const origin = await newPrimaryOrigin(b, s.cluster);
    expect(origin.source).toMatchObject({ timeline: 2, history: [{ timeline: 1 }] });
    expect(origin.source.history?.[0]?.switchLsn).toBeLessThanOrEqual(cutAt);
    expect(origin.insert.origin).toEqual({ systemId: origin.source.systemId, timeline: 2 });
    const { fresh, end } = await writeOnNewPrimary(b);
    // By number, the old checkpoint covers every one of them.
    expect(end).toBeLessThan(checkpoint);
    const counts = await arrivals(b, relay, fresh);
    await b.reader.caughtUp();
    const all = b.reader.delivered();
    const { duplicates, violations } = orderAndDuplicates(all);
    const unproven = await relay.metric('outboxd_checkpoint_unproven_total');
    const warning = relay.logLines().find((l) => String(l.msg).includes('the checkpoint proves nothing'));
    console.log(
      `[failover behind, exactly-once, PG17] standby cut at ${cutAt.toString(16)}, checkpoint ${checkpoint.toString(16)} on timeline 1, new primary's WAL after the rows ${end.toString(16)}; fresh rows arrived ${counts.size}/${fresh.length}; duplicates ${duplicates}; unproven ${unproven}; ${String(warning?.msg)}`,
    );
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    // What the standby had shared with the old primary was skipped (the checkpoint proves it), so
    // nothing at all came twice.
    expect(duplicates).toBe(0);
    expect(violations).toEqual([]);
    expect(unproven).toBe(fresh.length);
    expect(warning).toMatchObject({ level: 'warn', checkpointTimeline: 1, timeline: 2 });
    expect(lsn(String(warning?.provableBelow))).toBeLessThanOrEqual(cutAt);
    expect(relay.child.exitCode).toBeNull();
  });

  it('PostgreSQL 15, exactly-once, lost-slot recovery: rows written on the new primary after its new slot, below the old checkpoint, all arrive once', async () => {
    await using s = await scene({ version: 15, syncSlots: false, onLostSlot: 'recover-from-outbox', kind: 'kafka', behind: true });
    const { b, cluster } = s;
    const relay = b.start();
    await relay.ready();
    const { cutAt, gone } = await cutOffBehind(s, () =>
      until(
        'an epoch recorded in the marker, on the standby',
        async () => {
          const rows = await cluster.queryStandby<{ c: string | null }>(
            `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
            [],
            b.db.name,
          );
          const comment = rows[0]?.c ?? '';
          if (!comment.startsWith('outboxd:')) return false;
          // This slot's own epoch (marker v2: `epochs[slot]`).
          return JSON.parse(comment.slice('outboxd:'.length)).epochs?.[b.db.slot]?.xid !== undefined;
        },
        30_000,
      ),
    );
    const checkpoint = lastCommitLsn(b, gone);
    expect(checkpoint).toBeGreaterThan(cutAt);
    await failover(s);
    await until('recovered on the new primary', async () => relay.stderr.includes('lost-slot recovery done'), 60_000, 50);
    await reconnectWriter(b);
    const { fresh, end } = await writeOnNewPrimary(b);
    expect(end).toBeLessThan(checkpoint);
    const counts = await arrivals(b, relay, fresh);
    await b.reader.caughtUp();
    const unproven = await relay.metric('outboxd_checkpoint_unproven_total');
    console.log(
      `[failover behind, exactly-once, PG15 recover-from-outbox] standby cut at ${cutAt.toString(16)}, checkpoint ${checkpoint.toString(16)}, new primary's WAL after the rows ${end.toString(16)}; fresh rows arrived ${counts.size}/${fresh.length}; unproven ${unproven}; recovered ${await relay.metric('outboxd_recovered_messages_total')}`,
    );
    expect([...counts.values()].every((n) => n === 1)).toBe(true);
    expect(unproven).toBe(fresh.length);
    expect(relay.child.exitCode).toBeNull();
  });

  it('PostgreSQL 17, at least once: no status update to the new primary confirms more than it streamed, and no row written there is lost across a restart', async () => {
    await using s = await scene({ syncSlots: true, onLostSlot: 'exit', behind: true });
    const { b, cluster } = s;
    let relay = b.start();
    await relay.ready();
    const { cutAt } = await cutOffBehind(s, syncedToStandby(s));
    const walEnd = await b.db.walLsn();
    await until(
      'the old primary’s slot confirmed past the last row',
      async () => ((await b.db.slotInfo())?.confirmed ?? 0n) >= walEnd,
      30_000,
    );
    const oldConfirmed = (await b.db.slotInfo())?.confirmed ?? 0n;
    expect(oldConfirmed).toBeGreaterThan(cutAt);
    const { stoppedAt } = await failover(s);
    // Watch the slot on the new primary: its confirmed position, then (read after it, so never
    // behind it by a race) the WAL its walsender has sent us, or all the WAL it has.
    const over: string[] = [];
    let samples = 0;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        try {
          const [slot] = await cluster.queryStandby<{ c: string | null }>(
            'SELECT confirmed_flush_lsn::text AS c FROM pg_replication_slots WHERE slot_name = $1',
            [b.db.slot],
          );
          const [sent] = await cluster.queryStandby<{ s: string }>(
            `SELECT COALESCE((SELECT r.sent_lsn FROM pg_replication_slots p JOIN pg_stat_replication r ON r.pid = p.active_pid
                               WHERE p.slot_name = $1 AND r.sent_lsn > '0/0'), pg_current_wal_lsn())::text AS s`,
            [b.db.slot],
          );
          samples++;
          if (slot?.c && sent && lsn(slot.c) > lsn(sent.s)) over.push(`confirmed ${slot.c} > streamed ${sent.s}`);
        } catch {
          // the server is busy promoting; the next sample tells
        }
        await sleep(20); // pacing: the sampling rate
      }
    })();
    const streamingAgain = () => relay.logLines().some((l) => l.msg === 'streaming' && Date.parse(String(l.time)) > stoppedAt);
    await until('the relay streaming on the new primary', async () => streamingAgain(), 60_000, 50);
    // Three status intervals (1 s each): the first status update, and the pings after it. A
    // heartbeat received back from the new primary is one more status update sent after it.
    const heartbeats = await relay.metric('outboxd_heartbeats_received_total');
    await until(
      'three heartbeats back from the new primary, sampled',
      async () => (await relay.metric('outboxd_heartbeats_received_total')) >= heartbeats + 3 && samples > 10,
      30_000,
      100,
    );
    watching = false;
    await watcher;
    console.log(
      `[failover behind, at least once, PG17] standby cut at ${cutAt.toString(16)}, old primary confirmed ${oldConfirmed.toString(16)}; ${samples} samples on the new primary, ${over.length} above what it streamed${over.length > 0 ? ` (first: ${over[0]})` : ''}`,
    );
    expect(samples).toBeGreaterThan(10);
    expect.soft(over.length, `status updates above what the new primary streamed, e.g. ${over.slice(0, 2).join('; ')}`).toBe(0);
    // A restart while rows the old timeline's position covers by number wait: the slot resumes
    // from its own position, so they come.
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
    await reconnectWriter(b);
    const { fresh, end } = await writeOnNewPrimary(b);
    expect(end).toBeLessThan(oldConfirmed);
    relay = b.start();
    await relay.ready();
    const counts = await arrivals(b, relay, fresh);
    expect(counts.size).toBe(fresh.length);
  });
});
