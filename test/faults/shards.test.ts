import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { CliProcess, type RelayProcess, defer, sleep, until } from '../integration/support.js';
import {
  type Bundle,
  type BundleOptions,
  type Delivered,
  type SinkKind,
  bundle,
  markerOf,
  orderAndDuplicates,
  waitDelivered,
} from './fixtures.js';

/**
 * Shards (issue 25, docs/adr/0020-shards.md) with their relays as processes, against real
 * PostgreSQL, Kafka and RabbitMQ: shard 0, 1 and 2 of 3 on one outbox, set up by `outboxd setup`.
 *
 * Which shard published a message is read from the message itself: every relay sends CloudEvents
 * (binary) whose `source` is `/shard-<its index>/…`. What shard a key belongs to is asked of
 * PostgreSQL (`hashtext` in SQL), not of outboxd's own hash, so a hash that drifted from the
 * server's fails here too. Rows reach a shard through its publication's row filter; logical
 * messages reach every shard, and only the one their key hashes to may publish them.
 */

const COUNT = 3;
const SHARDS = [0, 1, 2];
/** postgres.shard, the index from the environment (as the chart passes the pod ordinal). */
const SHARD_YAML = `  shard:\n    index: \${OUTBOXD_SHARD_INDEX}\n    count: ${COUNT}\n`;
/** Under sink: the publishing shard in every message's CloudEvents source. */
const SOURCE_YAML = `  cloudevents:\n    mode: binary\n    source: /shard-\${OUTBOXD_SHARD_INDEX}/{aggregatetype}\n`;
/** What one SIGKILL can publish twice: the in-flight bound (2,000) and the batch being confirmed (500). */
const IN_FLIGHT_WINDOW = 2_500;

/** The bundle of the fault suite, sharded 3 ways, each message naming its shard. */
function sharded(o: Omit<BundleOptions, 'postgresExtra' | 'sinkExtra'>): Promise<Bundle> {
  return bundle({ ...o, postgresExtra: SHARD_YAML, sinkExtra: SOURCE_YAML });
}

/** The shard that published a delivered message, from its CloudEvents source; -1 without one. */
function publishedBy(d: Delivered): number {
  const source = d.headers.ce_source ?? d.headers['cloudEvents:source'] ?? '';
  const m = /^\/shard-(\d+)\//.exec(source);
  return m ? Number(m[1]) : -1;
}

/** The shard PostgreSQL's own hash gives each key: the row filter's expression, in SQL. */
async function serverShards(b: Bundle, keys: Iterable<string>): Promise<Map<string, number>> {
  const { rows } = await b.db.client.query<{ k: string; s: number }>(
    `SELECT k, (hashtext(k COLLATE "C") & 2147483647) % $2 AS s FROM unnest($1::text[]) AS k`,
    [[...new Set(keys)], COUNT],
  );
  return new Map(rows.map((r) => [r.k, r.s]));
}

/** Keys of several shapes and lengths, multi-byte ones too, so that the hash's every tail is used. */
function keyOf(i: number): string {
  switch (i % 4) {
    case 0:
      return `order-${i}`;
    case 1:
      return `клиент-${i}`;
    case 2:
      return `${'x'.repeat(i % 29)}${i}`;
    default:
      return `😀é${i}`;
  }
}

interface Written {
  id: string;
  key: string;
  seq: number;
  kind: 'row' | 'message';
}

/**
 * Writes `total` events over `keys` keys into public.outbox, rows and transactional logical
 * messages mixed: a transaction of 60 rows and 3 messages, then 40 one-event transactions (every
 * tenth a message), `paceMs` apart. Each payload carries its key's sequence, in commit order, for
 * the order check (`seqs`: go on from an earlier call's sequences).
 */
async function writeMixed(b: Bundle, total: number, keys: number, paceMs = 5, seqs = new Map<string, number>()): Promise<Written[]> {
  const out: Written[] = [];
  const next = (kind: Written['kind']): Written => {
    const key = keyOf(out.length % keys);
    const seq = (seqs.get(key) ?? 0) + 1;
    seqs.set(key, seq);
    const w = { id: randomUUID(), key, seq, kind };
    out.push(w);
    return w;
  };
  // A key keeps its type, so its whole sequence is in one topic (Kafka) and checked there.
  const type = (w: Written) => b.types[w.key.length % b.types.length] as string;
  const tx = async (events: Written[]) => {
    const rows = events.filter((e) => e.kind === 'row');
    const c = b.db.client;
    await c.query('BEGIN');
    if (rows.length > 0) {
      const values: unknown[] = [];
      const tuples = rows.map((r, j) => {
        values.push(r.id, type(r), r.key, JSON.stringify({ seq: r.seq, key: r.key }));
        return `($${j * 4 + 1}, $${j * 4 + 2}, $${j * 4 + 3}, 'T', $${j * 4 + 4})`;
      });
      await c.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ${tuples.join(', ')}`, values);
    }
    for (const m of events.filter((e) => e.kind === 'message')) {
      const content = { id: m.id, aggregatetype: type(m), aggregateid: m.key, type: 'T', payload: { seq: m.seq, key: m.key } };
      await c.query(`SELECT pg_logical_emit_message(true, 'outbox', $1::text)`, [JSON.stringify(content)]);
    }
    await c.query('COMMIT');
  };
  while (out.length < total) {
    // Rows first, then the messages: the order the transaction commits them in.
    const big: Written[] = [];
    for (let j = 0; j < 60 && out.length < total; j++) big.push(next('row'));
    for (let j = 0; j < 3 && out.length < total; j++) big.push(next('message'));
    await tx(big);
    for (let j = 0; j < 40 && out.length < total; j++) {
      await tx([next(j % 10 === 9 ? 'message' : 'row')]);
      await sleep(paceMs); // pacing: the write rate, so that the kills land while rows arrive
    }
  }
  return out;
}

/** The three relays of one outbox, each on its own HTTP port, and how often each was killed. */
interface Fleet {
  relays: RelayProcess[];
  kills: number[];
  /** SIGKILLs shard `i`'s relay and starts it again, ready. */
  kill(i: number): Promise<void>;
  /** Stops every relay with SIGTERM: each exits 0 (none died or was fenced on its own). */
  stop(): Promise<void>;
}

/**
 * `outboxd setup` (the CLI, as an operator runs it) creates every shard's publication and slot;
 * then shard 0, 1 and 2 start. Returns with all three ready.
 */
async function fleet(b: Bundle): Promise<Fleet> {
  const setup = await CliProcess.run(['setup', '-c', b.configFile], { OUTBOXD_SHARD_INDEX: '0' });
  expect(setup.code, setup.stderr).toBe(0);
  for (const i of SHARDS) {
    expect(setup.stdout).toContain(`-- publication outboxd_${i}_of_${COUNT}: created`);
    expect(setup.stdout).toContain(`-- replication slot ${b.db.slot}_${i}_of_${COUNT}: created`);
  }
  const ports = await Promise.all(SHARDS.map(() => getFreePort()));
  const start = (i: number) => b.startOn(ports[i] as number, { OUTBOXD_SHARD_INDEX: String(i) });
  const relays = SHARDS.map(start);
  await Promise.all(relays.map((r) => r.ready()));
  const kills = SHARDS.map(() => 0);
  return {
    relays,
    kills,
    async kill(i) {
      const relay = relays[i] as RelayProcess;
      expect(relay.child.exitCode, `shard ${i} exited on its own: ${relay.stderr.slice(-1500)}`).toBeNull();
      relay.kill('SIGKILL');
      expect(await relay.exited).toBe(-1);
      kills[i] = (kills[i] ?? 0) + 1;
      relays[i] = start(i);
      await (relays[i] as RelayProcess).ready();
    },
    async stop() {
      for (const r of relays) r.kill('SIGTERM');
      const codes = await Promise.all(relays.map((r) => r.exited));
      expect(codes, relays.map((r) => r.stderr.slice(-500)).join('\n')).toEqual([0, 0, 0]);
    },
  };
}

/**
 * When the test ends, before the bundle drops the database: every relay gone and every shard's
 * slot released (a killed relay's walsender can outlive it for a moment, and an active slot cannot
 * be dropped).
 */
function releaseSlots(b: Bundle, f: () => Fleet | undefined): AsyncDisposable {
  return defer(async () => {
    for (const r of f()?.relays ?? []) {
      if (r.child.exitCode === null && r.child.signalCode === null) r.kill('SIGKILL');
      await r.exited;
    }
    await until(
      'every shard slot released',
      async () => {
        const { rows } = await b.db.client.query(
          `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name LIKE $1 AND active_pid IS NOT NULL`,
          [`${b.db.slot}\\_%`],
        );
        return rows.length === 0;
      },
      20_000,
      100,
    );
  });
}

/**
 * Kills a random shard's relay (restarting it each time) every 0.3–1 s while `writing`: each
 * shard first, in a random order, so every one is killed at least once; at least `min` kills.
 */
async function killWhile(f: Fleet, writing: () => boolean, min: number, max: number): Promise<{ kills: number; whileWriting: number }> {
  const order = [...SHARDS].sort(() => Math.random() - 0.5);
  let kills = 0;
  let whileWriting = 0;
  while (kills < min || (writing() && kills < max)) {
    await sleep(300 + Math.random() * 700); // pacing: a random kill interval, not a wait
    if (writing()) whileWriting++;
    await f.kill(order[kills] ?? Math.floor(Math.random() * COUNT));
    kills++;
  }
  return { kills, whileWriting };
}

/**
 * Waits for every event (up to the timeout), then for the reader to hold all the broker holds,
 * and checks the shard guarantees: lost, duplicates (per publishing shard), per-key order, and
 * each key published only by the shard PostgreSQL's hash gives it.
 */
async function shardReport(b: Bundle, written: readonly Written[]) {
  await waitDelivered(
    b.reader,
    written.map((w) => w.id),
    120_000,
  ).catch(() => undefined);
  await b.reader.caughtUp();
  const all = b.reader.delivered();
  const { violations, duplicates, unique } = orderAndDuplicates(all);
  const got = new Set(all.map((d) => d.id));
  const lost = written.filter((w) => !got.has(w.id));
  const owner = await serverShards(b, [...written.map((w) => w.key), ...all.map((d) => d.key)]);
  // Every copy of every message: published by the key's shard, and by no other.
  const misplaced = all.filter((d) => publishedBy(d) !== owner.get(d.key));
  const seen = new Set<string>();
  const duplicatesBy = SHARDS.map(() => 0);
  for (const d of all) {
    if (seen.has(d.id)) duplicatesBy[publishedBy(d)] = (duplicatesBy[publishedBy(d)] ?? 0) + 1;
    seen.add(d.id);
  }
  const keysBy = SHARDS.map((i) => new Set(written.filter((w) => owner.get(w.key) === i).map((w) => w.key)).size);
  return { all, violations, duplicates, unique, lost, misplaced, duplicatesBy, keysBy, owner };
}

function describeMisplaced(r: Awaited<ReturnType<typeof shardReport>>): string {
  return r.misplaced
    .slice(0, 5)
    .map((d) => `id ${d.id} key ${JSON.stringify(d.key)} (shard ${r.owner.get(d.key)}) published by shard ${publishedBy(d)}`)
    .join('; ');
}

const sinks: SinkKind[] = ['kafka', 'rabbitmq'];

describe.each(sinks)('3 shards under kill -9 → %s', (kind) => {
  it('random SIGKILLs of single shards during 5,000 rows and logical messages: 0 lost, per-key order, each key from its shard alone', async () => {
    await using b = await sharded({ kind });
    let f: Fleet | undefined;
    await using _ = releaseSlots(b, () => f);
    f = await fleet(b);
    let writing = true;
    const t0 = Date.now();
    let writeMs = 0;
    const writer = writeMixed(b, 5_000, 400).finally(() => {
      writing = false;
      writeMs = Date.now() - t0;
    });
    const { kills, whileWriting } = await killWhile(f, () => writing, 5, 8);
    const written = await writer;
    const r = await shardReport(b, written);
    const messages = written.filter((w) => w.kind === 'message').length;
    process.stdout.write(
      `[shards ${kind}] kills=${kills} (${whileWriting} while writing, ${writeMs} ms; by shard ${f.kills.join('/')}) events=${written.length} (messages ${messages}) keys by shard ${r.keysBy.join('/')} delivered=${r.all.length} unique=${r.unique} duplicates=${r.duplicates} (by shard ${r.duplicatesBy.join('/')}) lost=${r.lost.length}\n`,
    );
    expect(whileWriting, 'kills while the writer wrote').toBeGreaterThanOrEqual(3);
    expect(r.lost.length, `lost, e.g. ${JSON.stringify(r.lost.slice(0, 3))}`).toBe(0);
    expect(r.unique).toBe(written.length);
    expect(r.misplaced.length, describeMisplaced(r)).toBe(0);
    expect(r.violations).toEqual([]);
    // Duplicates only from a killed relay's in-flight window, and only of its own shard's keys.
    for (const i of SHARDS) expect(r.duplicatesBy[i], `shard ${i}`).toBeLessThanOrEqual((f.kills[i] ?? 0) * IN_FLIGHT_WINDOW);
    // Every shard carried keys, and took part: the test shows three shards, not one.
    for (const i of SHARDS) expect(r.all.some((d) => publishedBy(d) === i)).toBe(true);
    await f.stop();
  }, 150_000);
});

describe('3 shards, exactly-once → kafka', () => {
  it('random SIGKILLs during 4,000 rows and logical messages: a read_committed consumer sees 0 duplicates, 0 lost, each key from its shard', async () => {
    await using b = await sharded({ kind: 'kafka', exactlyOnce: true });
    let f: Fleet | undefined;
    await using _ = releaseSlots(b, () => f);
    f = await fleet(b);
    let writing = true;
    const t0 = Date.now();
    let writeMs = 0;
    const writer = writeMixed(b, 4_000, 300).finally(() => {
      writing = false;
      writeMs = Date.now() - t0;
    });
    const { kills, whileWriting } = await killWhile(f, () => writing, 5, 8);
    const written = await writer;
    const r = await shardReport(b, written);
    process.stdout.write(
      `[shards kafka exactly-once] kills=${kills} (${whileWriting} while writing, ${writeMs} ms; by shard ${f.kills.join('/')}) events=${written.length} delivered=${r.all.length} duplicates=${r.duplicates} lost=${r.lost.length}\n`,
    );
    expect(whileWriting, 'kills while the writer wrote').toBeGreaterThanOrEqual(3);
    expect(r.lost.length).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.misplaced.length, describeMisplaced(r)).toBe(0);
    expect(r.violations).toEqual([]);
    // Each shard has its own transactional id: none fenced another (stop() sees every exit 0).
    for (const relay of f.relays) expect(await relay.metric('outboxd_fenced')).toBe(0);
    await f.stop();
  }, 150_000);
});

describe('logical messages with 3 shards', () => {
  it('each is published once, by the shard its key hashes to; a message without a key is reported by shard 0 alone', async () => {
    await using b = await sharded({ kind: 'kafka', onPoison: 'dead-letter' });
    let f: Fleet | undefined;
    await using _ = releaseSlots(b, () => f);
    f = await fleet(b);
    const relays = f.relays;
    const messages: Written[] = [];
    const seqs = new Map<string, number>();
    const poisonId = randomUUID();
    const emit = (content: unknown) =>
      b.db.client.query(`SELECT pg_logical_emit_message(true, 'outbox', $1::text)`, [JSON.stringify(content)]);
    for (let t = 0; t < 60; t++) {
      await b.db.client.query('BEGIN');
      for (let j = 0; j < 10; j++) {
        const key = keyOf((t * 10 + j) % 250);
        const seq = (seqs.get(key) ?? 0) + 1;
        seqs.set(key, seq);
        const m: Written = { id: randomUUID(), key, seq, kind: 'message' };
        messages.push(m);
        await emit({ id: m.id, aggregatetype: b.types[j % 2], aggregateid: key, type: 'T', payload: { seq, key } });
      }
      // Halfway, in a transaction of good ones: a message without aggregateid (poison, null_key).
      if (t === 30) await emit({ id: poisonId, aggregatetype: b.types[0], type: 'T', payload: { seq: 1 } });
      await b.db.client.query('COMMIT');
    }
    await until('the dead letter', async () => b.reader.delivered().some((d) => d.id === poisonId), 60_000, 100);
    const r = await shardReport(b, messages);
    const own = SHARDS.map((i) => messages.filter((m) => r.owner.get(m.key) === i).length);
    const topics = new Set(b.types.map((t) => `outbox.event.${t}`));
    const main = r.all.filter((d) => topics.has(d.stream.split('/')[0] as string));
    const letters = r.all.filter((d) => !topics.has(d.stream.split('/')[0] as string));
    expect(r.lost.length).toBe(0);
    const inMain = orderAndDuplicates(main);
    expect(main.length, 'each message once, in all').toBe(messages.length);
    expect(inMain.duplicates).toBe(0);
    expect(r.misplaced.filter((d) => topics.has(d.stream.split('/')[0] as string)).length, describeMisplaced(r)).toBe(0);
    expect(inMain.violations).toEqual([]);
    // The poison message: one dead letter, from shard 0.
    expect(letters.map((d) => [d.id, d.headers['outboxd.error_reason']])).toEqual([[poisonId, 'null_key']]);
    // What each shard says it did (no kills here, so its counters are the whole story).
    const ignored = (i: number) => (relays[i] as RelayProcess).metric('outboxd_changes_ignored_total', { kind: 'other_shard_message' });
    const others = (i: number) => messages.length - (own[i] ?? 0) + (i === 0 ? 0 : 1);
    await until(
      'every shard read every message',
      async () => (await Promise.all(SHARDS.map(async (i) => (await ignored(i)) >= others(i)))).every(Boolean),
      30_000,
      100,
    ).catch(() => undefined);
    const counts = await Promise.all(
      SHARDS.map(async (i) => {
        const relay = relays[i] as RelayProcess;
        const shard = { shard: String(i) };
        return {
          published: await relay.metric('outboxd_messages_published_total', shard),
          otherShard: await relay.metric('outboxd_changes_ignored_total', { ...shard, kind: 'other_shard_message' }),
          poison: await relay.metric('outboxd_poison_messages_total', shard),
          deadLettered: await relay.metric('outboxd_dead_lettered_total', shard),
        };
      }),
    );
    process.stdout.write(
      `[shards logical messages] messages=${messages.length} own by shard ${own.join('/')} metrics ${JSON.stringify(counts)}\n`,
    );
    expect(counts).toEqual(
      SHARDS.map((i) => ({ published: own[i], otherShard: others(i), poison: i === 0 ? 1 : 0, deadLettered: i === 0 ? 1 : 0 })),
    );
    for (const i of SHARDS) expect(own[i]).toBeGreaterThan(0);
    await f.stop();
  }, 120_000);
});

describe('a lost slot of one shard, recovered from the outbox', () => {
  it("publishes again only that shard's retained rows: no other shard's key, 0 lost, per-key order", async () => {
    await using b = await bundle({
      kind: 'kafka',
      postgresExtra: `${SHARD_YAML}  onLostSlot: recover-from-outbox\n`,
      outboxExtra: '  prune:\n    mode: off\n    interval: 300ms\n',
      sinkExtra: SOURCE_YAML,
    });
    let f: Fleet | undefined;
    await using _ = releaseSlots(b, () => f);
    f = await fleet(b);
    const seqs = new Map<string, number>();
    const first = await writeMixed(b, 600, 90, 1, seqs);
    await waitDelivered(
      b.reader,
      first.map((w) => w.id),
    );
    const slot1 = `${b.db.slot}_1_of_${COUNT}`;
    await until(
      'shard 1 records its confirmed epoch',
      async () => (await markerOf(b, `outboxd_1_of_${COUNT}`)).epochs.has(slot1),
      30_000,
      100,
    );
    // Shard 1 stops; its slot is dropped while rows keep coming (every shard's keys).
    const relay1 = f.relays[1] as RelayProcess;
    relay1.kill('SIGTERM');
    expect(await relay1.exited).toBe(0);
    await b.db.client.query('SELECT pg_drop_replication_slot($1)', [slot1]);
    const second = await writeMixed(b, 600, 90, 1, seqs);
    f.relays[1] = b.startOn(await getFreePort(), { OUTBOXD_SHARD_INDEX: '1' });
    // Logical messages are in no table: those shard 1's slot never read are gone with it
    // (docs/runbook.md#lost-slot). Every row, and every other message, must arrive.
    const owner = await serverShards(
      b,
      second.map((w) => w.key),
    );
    const gone = second.filter((w) => w.kind === 'message' && owner.get(w.key) === 1);
    const written = [...first, ...second].filter((w) => !gone.includes(w));
    const r = await shardReport(b, written);
    process.stdout.write(
      `[shards recovery] events=${written.length} (+${gone.length} messages of the lost slot) delivered=${r.all.length} duplicates=${r.duplicates} (by shard ${r.duplicatesBy.join('/')}) lost=${r.lost.length}\n`,
    );
    expect(r.lost, 'lost').toEqual([]);
    // The recovery republished rows (its epoch is behind what it had sent), all of them shard 1's.
    expect(r.duplicatesBy[1]).toBeGreaterThan(0);
    expect(r.misplaced.length, describeMisplaced(r)).toBe(0);
    expect(r.violations).toEqual([]);
    expect(f.relays[1]?.stderr + (f.relays[1]?.stdout ?? '')).toMatch(/recover/i);
    await f.stop();
  }, 150_000);
});

describe('pruning with 3 shards', () => {
  it('deletes only what every shard has confirmed, each shard its own share', async () => {
    await using b = await bundle({
      kind: 'kafka',
      postgresExtra: SHARD_YAML,
      outboxExtra: '  prune:\n    mode: delete\n    retain: 0s\n    interval: 300ms\n    batchSize: 100\n    pause: 0\n',
      sinkExtra: SOURCE_YAML,
    });
    let f: Fleet | undefined;
    await using _ = releaseSlots(b, () => f);
    f = await fleet(b);
    const left = async () => Number((await b.db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox')).rows[0]?.n);
    const first = (await writeMixed(b, 300, 60, 1)).filter((w) => w.kind === 'row');
    await waitDelivered(
      b.reader,
      first.map((w) => w.id),
    );
    await until('the confirmed rows pruned', async () => (await left()) === 0, 30_000, 100);
    // Shard 2 stops: its epoch stays where it was, and holds every shard's pruning.
    const relay2 = f.relays[2] as RelayProcess;
    relay2.kill('SIGTERM');
    expect(await relay2.exited).toBe(0);
    const second = (await writeMixed(b, 300, 60, 1)).filter((w) => w.kind === 'row');
    const owner = await serverShards(
      b,
      second.map((w) => w.key),
    );
    await waitDelivered(
      b.reader,
      second.filter((w) => owner.get(w.key) !== 2).map((w) => w.id),
    );
    await sleep(2_000); // several prune rounds of shards 0 and 1
    expect(await left()).toBe(second.length);
    // Shard 2 comes back, confirms its rows, and the rows of all three shards go.
    f.relays[2] = b.startOn(await getFreePort(), { OUTBOXD_SHARD_INDEX: '2' });
    await until('every row pruned once shard 2 confirmed', async () => (await left()) === 0, 60_000, 100);
    // Each shard deleted its own share: the counts add up to the rows, and every shard deleted some.
    const pruned = await Promise.all(f.relays.map((r) => r.metric('outboxd_pruned_rows_total')));
    for (const [i, n] of pruned.entries()) expect(n, `shard ${i}`).toBeGreaterThan(0);
    await f.stop();
  }, 150_000);
});
