import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { keyShard } from '../../src/postgres/shard.js';
import { getFreePort } from '../harness/ports.js';
import { CliProcess, RelayProcess, defer, sleep, until } from '../integration/support.js';
import { type Bundle, bundle, markerOf, orderAndDuplicates, steadyWriter, waitDelivered } from './fixtures.js';

/**
 * Resharding under a steady writer (issue 25; docs/adr/0020-shards.md): an outbox relayed by 2
 * shards moves to 3 while rows keep coming, with `outboxd reshard`. Nothing is lost, nothing is
 * published twice (no relay is killed here, so there is no in-flight window to repeat), and every
 * key's events stay in order across the change: the old shards publish everything before the
 * fence, the new ones everything after it, and only once the old ones have retired. Then
 * `reshard --finish` drops the old slots. Real PostgreSQL 15 and Kafka, the relays as processes.
 */

const SHARD = '  shard:\n    index: ${OUTBOXD_SHARD_INDEX}\n    count: ${OUTBOXD_SHARD_COUNT}\n';

async function shardRelay(b: Bundle, index: number, count: number, env: NodeJS.ProcessEnv = {}): Promise<RelayProcess> {
  return b.startOn(await getFreePort(), { ...env, OUTBOXD_SHARD_INDEX: String(index), OUTBOXD_SHARD_COUNT: String(count) });
}

const cli = (b: Bundle, count: number, ...args: string[]) =>
  CliProcess.run([...args, '-c', b.configFile], { OUTBOXD_SHARD_INDEX: '0', OUTBOXD_SHARD_COUNT: String(count) });

/** A relay's outboxd_messages_published_total over every destination. */
async function published(r: RelayProcess): Promise<number> {
  const text = (await r.http('/metrics')).body;
  let n = 0;
  for (const m of text.matchAll(/^outboxd_messages_published_total\{[^}]*\} (\d+)/gm)) n += Number(m[1]);
  return n;
}

/** Waits until every shard of the new set of `count` has recorded `started` at the fence. */
async function allStarted(b: Bundle, count: number): Promise<void> {
  await until(
    `every new shard of ${count} started at the fence`,
    async () => {
      for (let i = 0; i < count; i++) {
        const state = (await markerOf(b, `outboxd_${i}_of_${count}`)).reshards?.get(`${b.db.slot}_${i}_of_${count}`)?.state;
        if (state !== 'started') return false;
      }
      return true;
    },
    60_000,
    200,
  );
}

describe('resharding 2 → 3 under a steady writer', () => {
  it('loses nothing, repeats nothing, keeps every key in order; --finish drops the old slots', async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: SHARD });
    const setup = await cli(b, 2, 'setup');
    expect(setup.code, setup.stderr).toBe(0);
    const old = [await shardRelay(b, 0, 2), await shardRelay(b, 1, 2)];
    await Promise.all(old.map((r) => r.ready()));
    const writer = steadyWriter(b, 2, 40);
    await using _writer = defer(() => writer.stop());
    await until('the old shards relay', async () => (await Promise.all(old.map(published))).every((n) => n > 50), 60_000, 200);

    // Raising the count without a reshard is refused: both sets would publish the same rows.
    const wrong = await cli(b, 3, 'setup');
    expect(wrong.code).toBe(3);
    expect(wrong.stderr).toMatch(/slot .*_0_of_3 does not exist, but .*_0_of_2, .*_1_of_2 of another shard set .* outboxd reshard/);

    const start = await cli(b, 3, 'reshard', '--from', '2');
    expect(start.code, start.stderr).toBe(0);
    expect(start.stdout).toMatch(/fence written at/);
    expect((await cli(b, 3, 'validate', '--connect')).stdout).toMatch(
      /warn {2}reshard: .*_0_of_3 is a new shard of reshard .* waits until/,
    );
    // Before the new shards run, --finish refuses: nothing has started.
    expect((await cli(b, 3, 'reshard', '--from', '2', '--finish')).code).toBe(1);
    const fresh = [await shardRelay(b, 0, 3), await shardRelay(b, 1, 3), await shardRelay(b, 2, 3)];
    await Promise.all(fresh.map((r) => r.ready()));
    await allStarted(b, 3);
    await sleep(2_000); // the new shards relay for a while
    await writer.stop();
    await waitDelivered(b.reader, writer.ids);
    await b.reader.caughtUp();

    const all = b.reader.delivered();
    const { violations, duplicates, unique } = orderAndDuplicates(all);
    expect(violations).toEqual([]);
    expect(duplicates).toBe(0);
    expect(unique).toBe(writer.ids.length);
    // Both sets did part of the work, and between them published each row once.
    const before = await Promise.all(old.map(published));
    const after = await Promise.all(fresh.map(published));
    expect(before.every((n) => n > 0) && after.every((n) => n > 0)).toBe(true);
    expect([...before, ...after].reduce((x, y) => x + y)).toBe(writer.ids.length);
    // Each new shard published only its own keys' rows: keys spread as the hash says.
    expect(after[keyShard('k0', 3)]).toBeGreaterThan(0);
    for (const i of [0, 1]) {
      const state = (await markerOf(b, `outboxd_${i}_of_2`)).reshards?.get(`${b.db.slot}_${i}_of_2`);
      expect(state?.state).toBe('retired');
    }

    expect((await cli(b, 2, 'validate', '--connect')).stdout).toMatch(/warn {2}reshard: .*_0_of_2 was retired by reshard/);
    // --finish waits for the old relays to stop (they hold their slots' leader locks).
    const early = await cli(b, 3, 'reshard', '--from', '2', '--finish');
    expect(early.code).toBe(1);
    expect(early.stderr).toMatch(/a relay of old slot .* still runs/);
    for (const r of old) {
      r.kill('SIGTERM');
      expect(await r.exited).toBe(0);
    }
    const finish = await cli(b, 3, 'reshard', '--from', '2', '--finish');
    expect(finish.code, finish.stderr).toBe(0);
    const { rows } = await b.db.client.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots ORDER BY 1');
    expect(rows.map((r) => r.slot_name)).toEqual([0, 1, 2].map((i) => `${b.db.slot}_${i}_of_3`));
    const pubs = await b.db.client.query<{ pubname: string }>(
      "SELECT pubname FROM pg_publication WHERE pubname LIKE 'outboxd%' ORDER BY 1",
    );
    expect(pubs.rows.map((r) => r.pubname)).toEqual(['outboxd_0_of_3', 'outboxd_1_of_3', 'outboxd_2_of_3']);
  });
});

describe('resharding an unsharded outbox into 2, with relays killed on both sides of the fence', () => {
  it('loses nothing and keeps every key in order (duplicates only from a killed relay)', async () => {
    await using b = await bundle({ kind: 'kafka' });
    // The same relay, sharded: the bundle's config with postgres.shard.
    const file = join(dirname(b.configFile), 'sharded.yaml');
    writeFileSync(file, readFileSync(b.configFile, 'utf8').replace(`  slot: ${b.db.slot}\n`, `  slot: ${b.db.slot}\n${SHARD}`));
    const unsharded = b.start();
    await unsharded.ready();
    const writer = steadyWriter(b, 2, 30);
    await using _writer = defer(() => writer.stop());
    await until('the unsharded relay relays', async () => (await published(unsharded)) > 100, 60_000, 200);
    const sharded = { OUTBOXD_SHARD_INDEX: '0', OUTBOXD_SHARD_COUNT: '2' };
    const start = await CliProcess.run(['reshard', '--from', 'unsharded', '-c', file], sharded);
    expect(start.code, start.stderr).toBe(0);
    // The old relay dies around the fence and comes back: it must still stop exactly there.
    unsharded.kill('SIGKILL');
    await unsharded.exited;
    const again = b.start();
    const spawned: RelayProcess[] = [];
    await using _relays = defer(async () => {
      for (const r of spawned) await r[Symbol.asyncDispose]();
    });
    const startShard = async (i: number) => {
      const port = await getFreePort();
      const r = new RelayProcess(file, port, { ...sharded, OUTBOXD_SHARD_INDEX: String(i), OUTBOXD_HTTP_PORT: String(port) });
      spawned.push(r);
      return r;
    };
    const relays = [await startShard(0), await startShard(1)];
    await allStarted(b, 2);
    expect((await markerOf(b)).reshards?.get(b.db.slot)?.state).toBe('retired');
    // A new shard dies after it started, and comes back: it goes on from its slot.
    await sleep(500);
    relays[1]?.kill('SIGKILL');
    await relays[1]?.exited;
    const back = await startShard(1);
    await sleep(1_500);
    await writer.stop();
    await waitDelivered(b.reader, writer.ids);
    await b.reader.caughtUp();
    const { violations, unique } = orderAndDuplicates(b.reader.delivered());
    expect(violations).toEqual([]);
    expect(unique).toBe(writer.ids.length);
    // The retired relay publishes nothing after it came back.
    expect(await published(again)).toBe(0);
    await back.ready();
  });
});
