import { spawnSync } from 'node:child_process';
import kafkajs from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { startKafka } from '../harness/kafka.js';
import { getFreePort } from '../harness/ports.js';
import { startPostgres } from '../harness/postgres.js';
import { kafkaBrokers } from '../harness/services.js';
import {
  MAIN,
  type OutboxRow,
  type RelayProcess,
  TopicReader,
  ordered,
  sleep,
  until,
  within,
  writeOutbox,
} from '../integration/support.js';
import {
  type Bundle,
  type BundleOptions,
  bundle,
  expectOneTooLargeDeadLettered,
  insertOneTooLarge,
  limitTopicMessageBytes,
  orderAndDuplicates,
  waitDelivered,
} from './fixtures.js';
import { TcpProxy } from './proxy.js';

/**
 * Exactly-once into Kafka (docs/adr/0009). Every consumer here reads read_committed unless it
 * says otherwise, and nothing is deduplicated: each test asserts zero lost, zero duplicates and
 * per-key order on what a plain read_committed consumer sees.
 */

const topicsOf = (b: Bundle) => b.types.map((t) => `outbox.event.${t}`);

/** The exactly-once bundle: Kafka, delivery exactly-once, a checkpoint topic of its own. */
function eos(o: Omit<BundleOptions, 'kind' | 'exactlyOnce'> = {}): Promise<Bundle> {
  return bundle({ kind: 'kafka', exactlyOnce: true, ...o });
}

/**
 * Waits for every row, then for the reader to reach the end of every partition (so a duplicate
 * still on its way would be seen), and returns what a plain consumer saw. Rows still missing
 * after the wait are counted in `lost`, for the caller's assertion to fail on (with the count).
 */
async function deliveredExactlyOnce(b: Bundle, rows: readonly OutboxRow[]) {
  await waitDelivered(
    b.reader,
    rows.map((r) => r.id),
    180_000,
  ).catch(() => undefined);
  await b.reader.caughtUp();
  const all = b.reader.delivered();
  const { violations, duplicates, unique } = orderAndDuplicates(all);
  const ids = new Set(all.map((d) => d.id));
  const lost = rows.filter((r) => !ids.has(r.id)).length;
  return { violations, duplicates, unique, lost, delivered: all.length };
}

async function slotHolders(b: Bundle): Promise<number[]> {
  const { rows } = await b.db.client.query<{ pid: number }>(
    `SELECT active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL
     UNION SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    [b.db.slot],
  );
  return rows.map((r) => r.pid);
}

/**
 * A leader SIGSTOPped mid-transaction (it holds each one open 500 ms before its commit) and a
 * standby that took over once the paused leader's sessions were ended, as a hung pod's would end
 * on their own (wal_sender_timeout, TCP keepalives). Resolves, the leader still stopped, with the
 * rows written before the pause (`first`) and after the takeover (`second`), and when it paused.
 */
async function standbyTookOver(b: Bundle) {
  const leader = b.startOn(await getFreePort(), { OUTBOXD_TEST_PAUSE_BEFORE_COMMIT_MS: '500' });
  await leader.ready();
  const standby = b.startOn(await getFreePort());
  await until('the standby', async () => (await standby.http('/readyz').catch(() => ({ body: '' }))).body.includes('standby'), 20_000);
  const first = await writeOutbox(b.db.client, { total: 2_000, keys: 100, types: b.types, batch: 100 });
  await until('the leader mid-transaction', async () => (await leader.metric('outboxd_inflight_messages')) > 0, 30_000, 20);
  leader.kill('SIGSTOP');
  const pausedAt = Date.now();
  const holders = await slotHolders(b);
  expect(holders.length).toBeGreaterThan(0);
  await b.db.client.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid', [holders]);
  await standby.ready(60_000);
  const second = await writeOutbox(b.db.client, { total: 2_000, keys: 100, types: b.types, batch: 100, keyPrefix: 'second-' });
  return { leader, standby, first, second, pausedAt };
}

describe('exactly-once → kafka', () => {
  it('chaos: 10 SIGKILLs during 50,000 rows over 500 keys: zero lost, zero duplicates, per-key order without dedupe', async () => {
    await using b = await eos();
    let relay = b.start();
    await relay.ready();
    let writing = true;
    const writer = writeOutbox(b.db.client, { total: 50_000, keys: 500, types: b.types, batch: 100, singles: 100 }).finally(() => {
      writing = false;
    });
    let kills = 0;
    let skipped = 0;
    while (kills < 10 || (writing && kills < 30)) {
      await sleep(150 + Math.random() * 600); // pacing: a random kill interval, not a wait
      skipped += await relay.metric('outboxd_checkpoint_skipped_total').catch(() => 0);
      relay.kill('SIGKILL');
      expect(await relay.exited).toBe(-1);
      kills++;
      relay = b.start();
      await relay.ready();
    }
    const rows = await writer;
    const r = await deliveredExactlyOnce(b, rows);
    process.stdout.write(
      `[chaos kafka exactly-once] kills=${kills} rows=${rows.length} delivered=${r.delivered} lost=${r.lost} duplicates=${r.duplicates} skipped-after-restart=${skipped}\n`,
    );
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  }, 300_000);

  it('chaos between the Kafka commit and the slot confirm: kills inside that window duplicate nothing', async () => {
    await using b = await eos();
    // Every commit is followed by 400 ms before the pipeline hears of it: the slot lags the
    // checkpoint for that long, and most kills land there (the checkpoint lag shows it).
    const env = { OUTBOXD_TEST_PAUSE_AFTER_COMMIT_MS: '400' };
    let relay = b.start(env);
    await relay.ready();
    let writing = true;
    const writer = writeOutbox(b.db.client, { total: 10_000, keys: 500, types: b.types, batch: 100 }).finally(() => {
      writing = false;
    });
    let kills = 0;
    let inWindow = 0;
    let skipped = 0;
    while (kills < 10 || (writing && kills < 30)) {
      await sleep(300 + Math.random() * 500); // pacing: a random kill interval, not a wait
      skipped += await relay.metric('outboxd_checkpoint_skipped_total').catch(() => 0);
      if ((await relay.metric('outboxd_checkpoint_lag_bytes').catch(() => 0)) > 0) inWindow++;
      relay.kill('SIGKILL');
      expect(await relay.exited).toBe(-1);
      kills++;
      relay = b.start(env);
      await relay.ready();
    }
    const rows = await writer;
    const r = await deliveredExactlyOnce(b, rows);
    skipped += await relay.metric('outboxd_checkpoint_skipped_total');
    process.stdout.write(
      `[chaos kafka exactly-once, commit→confirm window] kills=${kills} in-window=${inWindow} rows=${rows.length} lost=${r.lost} duplicates=${r.duplicates} skipped-after-restart=${skipped}\n`,
    );
    expect(inWindow).toBeGreaterThanOrEqual(3);
    // The restarts read back what Kafka already held, and skipped it.
    expect(skipped).toBeGreaterThan(0);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 300_000);

  it('read isolation: a read_uncommitted consumer sees aborted records; read_committed never does', async () => {
    // Kills while a transaction waits to commit leave its records in the log, aborted by the next start.
    await using b = await eos();
    await using dirty = new TopicReader(await kafkaBrokers(), { readUncommitted: true });
    await dirty.start(topicsOf(b));
    const env = { OUTBOXD_TEST_PAUSE_BEFORE_COMMIT_MS: '600' };
    let relay = b.start(env);
    await relay.ready();
    const writer = writeOutbox(b.db.client, { total: 6_000, keys: 100, types: b.types, batch: 100 });
    for (let kills = 0; kills < 4; kills++) {
      await until('a transaction waiting to commit', async () => (await relay.metric('outboxd_inflight_messages')) > 0, 30_000, 50);
      // Its records are in the log (a read_uncommitted reader has one read_committed has not)
      // while it waits the 600 ms before its commit: kill it there.
      await until(
        'records of an open transaction in the log',
        async () => {
          const committed = new Set(b.reader.delivered().map((d) => d.id));
          return dirty.messages.some((m) => !committed.has(m.headers.id ?? ''));
        },
        30_000,
        20,
      );
      relay.kill('SIGKILL');
      await relay.exited;
      relay = b.start(env);
      await relay.ready();
    }
    const rows = await writer;
    const committed = await deliveredExactlyOnce(b, rows);
    await dirty.waitForIds(rows.map((r) => r.id));
    const uncommitted = orderAndDuplicates(dirty.messages.map(ordered));
    process.stdout.write(
      `[read isolation] read_uncommitted duplicates=${uncommitted.duplicates}, read_committed duplicates=${committed.duplicates}\n`,
    );
    expect(uncommitted.duplicates).toBeGreaterThan(0);
    expect(committed.duplicates).toBe(0);
    expect(committed.lost).toBe(0);
  }, 240_000);

  it('fencing: a SIGSTOPped leader, a standby that takes over, SIGCONT: the old leader exits 5 and publishes nothing more', async () => {
    await using b = await eos();
    const { leader, first, second } = await standbyTookOver(b);
    leader.kill('SIGCONT');
    const code = await within(leader.exited, 60_000, 'still running');
    const fatal = leader.logLines().find((l) => l.level === 'fatal');
    expect(code, String(fatal?.msg)).toBe(5);
    expect(leader.stderr).toMatch(/fenced/);
    expect(String(fatal?.msg)).toMatch(/fenced: another producer took transactional id/);
    const third = await writeOutbox(b.db.client, { total: 1_000, keys: 100, types: b.types, keyPrefix: 'third-' });
    const r = await deliveredExactlyOnce(b, [...first, ...second, ...third]);
    process.stdout.write(`[fencing] old leader exit ${code}; lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 240_000);

  it('a zombie leader (issue 21, finding 7): paused mid-transaction past transactionTimeout while a standby took over, it exits 5 without fencing back or publishing; the new leader runs on; each event once', async () => {
    // A short transactionTimeout, so that the pause outlives it: the paused leader's fenced
    // answer then looks like its own timeout (the broker aborts a transaction open that long).
    await using b = await eos({ sinkExtra: '    transactionTimeout: 3s\n' });
    const { leader, standby, first, second, pausedAt } = await standbyTookOver(b);
    // The new leader has published the paused leader's batch again, and more, in its own transactions.
    await waitDelivered(
      b.reader,
      [...first, ...second].map((r) => r.id),
      120_000,
    );
    // Well past transactionTimeout since the paused transaction began. Kept: the point is that
    // this timeout elapses, and nothing outside the broker shows it (it aborts the transaction).
    await sleep(Math.max(0, pausedAt + 5_000 - Date.now()));
    const committedBefore = await standby.metric('outboxd_kafka_transactions_total', { result: 'committed' });
    leader.kill('SIGCONT');
    const code = await within(leader.exited, 60_000, 'still running');
    const fatal = leader.logLines().find((l) => l.level === 'fatal');
    const newLeader = standby.child.exitCode === null ? 'running' : `exited ${standby.child.exitCode}`;
    expect(code, `old leader: ${String(fatal?.msg ?? leader.stderr.slice(-1500))}; new leader ${newLeader}`).toBe(5);
    expect(String(fatal?.msg)).toMatch(/fenced: another producer took transactional id .* no longer holds the slot's leader lock/);
    // It fenced no one: it never took the id again, nor re-read the checkpoint as a leader.
    expect(leader.stderr).not.toMatch(/checkpoint re-read after a fenced error/);
    // The new leader goes on publishing, in new transactions, and is never fenced.
    const third = await writeOutbox(b.db.client, { total: 1_000, keys: 100, types: b.types, keyPrefix: 'third-' });
    const r = await deliveredExactlyOnce(b, [...first, ...second, ...third]);
    expect(await standby.metric('outboxd_kafka_transactions_total', { result: 'committed' })).toBeGreaterThan(committedBefore);
    expect(await standby.metric('outboxd_fenced')).toBe(0);
    expect(standby.child.exitCode).toBeNull();
    process.stdout.write(`[zombie leader] old leader exit ${code}; new leader running; lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 240_000);

  it('a dead letter whose key is too large to carry goes out in its smallest form, without the key, in a transaction of its own', async () => {
    await using b = await eos({ onPoison: 'dead-letter' });
    const relay = b.start();
    await relay.ready();
    const id = `huge-key-${b.db.slot}`;
    // The column fits the 1 MiB value limit, the message does not: poison, and every form of its
    // dead letter that carries the key is too large as well.
    await b.db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES (gen_random_uuid(), $1, $2, 'T', $3::jsonb)`,
      [b.types[0], 'k'.repeat(1024 * 1024 - 64), JSON.stringify({ id })],
    );
    const after = await writeOutbox(b.db.client, { total: 10, keys: 2, types: b.types, keyPrefix: 'after-' });
    const lastError = () =>
      relay
        .logLines()
        .filter((l) => l.level === 'error' || l.level === 'fatal' || l.level === 'warn')
        .map((l) => String(l.msg).slice(0, 300))
        .at(-1);
    await until(
      'the dead letter and the rows after it',
      async () => {
        const got = b.reader.delivered();
        return got.some((d) => d.headers['outboxd.error_reason'] === 'oversized') && after.every((r) => got.some((d) => d.id === r.id));
      },
      60_000,
      250,
      { abortReason: () => (relay.child.exitCode !== null ? `outboxd exited with ${relay.child.exitCode}: ${lastError()}` : undefined) },
    ).catch((err: Error) => {
      throw new Error(`${err.message}; outboxd said: ${lastError()}`);
    });
    const letter = b.reader.delivered().find((d) => d.headers['outboxd.error_reason'] === 'oversized');
    expect(letter?.headers['outboxd.dead_letter_shrunk']).toBe('payload,headers,key');
    expect(letter?.key, 'no record key').toBe('');
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
    expect(relay.child.exitCode).toBeNull();
  }, 120_000);

  it('outage: the broker restarts in the middle of transactions: zero lost, zero duplicates', async () => {
    await using k = { server: await startKafka(), [Symbol.asyncDispose]: async () => k.server.destroy() };
    await using b = await eos({ kafkaBrokers: k.server.brokers.join(',') });
    const relay = b.start();
    await relay.ready();
    const writer = writeOutbox(b.db.client, { total: 20_000, keys: 200, types: b.types, batch: 100 });
    await until(
      'publishing',
      async () => (await relay.metric('outboxd_kafka_transactions_total', { result: 'committed' })) > 3,
      30_000,
      50,
    );
    await k.server.stop();
    await sleep(3_000); // pacing: how long the outage lasts, not a wait for anything
    await k.server.start();
    const rows = await writer;
    const r = await deliveredExactlyOnce(b, rows);
    const why = async () => {
      const fatal = relay.logLines().find((l) => l.level === 'fatal');
      const state = fatal
        ? { body: `fatal: ${String(fatal.msg)}` }
        : await relay.http('/readyz').catch((e: Error) => ({ body: e.message }));
      return `delivered ${b.reader.delivered().length}; /readyz ${state.body.trim()}; relay log: ${relay.stderr
        .split('\n')
        .filter((l) => !l.includes('"module":"kafkajs"'))
        .slice(-8)
        .join('\n')}`;
    };
    process.stdout.write(`[eos broker restart] lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost, r.lost > 0 ? await why() : '').toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 240_000);

  it('outage: Postgres restarts (immediate) mid-stream: zero lost, zero duplicates', async () => {
    await using server = await startPostgres(15);
    await using b = await eos({ pgUrl: server.url });
    const relay = b.start();
    await relay.ready();
    const before = await writeOutbox(b.db.client, { total: 6_000, keys: 100, types: b.types, batch: 100 });
    await server.stop('immediate');
    await sleep(1_000); // pacing: how long the outage lasts, not a wait for anything
    await server.start();
    await b.db.reconnect();
    const after = await writeOutbox(b.db.client, { total: 2_000, keys: 100, types: b.types, keyPrefix: 'after-' });
    await relay.ready(60_000);
    const r = await deliveredExactlyOnce(b, [...before, ...after]);
    process.stdout.write(`[eos postgres restart] lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 240_000);

  it('outage: broker connections cut through a proxy mid-stream: zero lost, zero duplicates', async () => {
    const [host, port] = ((await kafkaBrokers())[0] as string).split(':') as [string, string];
    await using proxy = new TcpProxy(host, Number(port));
    await proxy.start();
    await using b = await eos({ relayBroker: `127.0.0.1:${proxy.port}` });
    const relay = b.start();
    await relay.ready();
    const writer = writeOutbox(b.db.client, { total: 8_000, keys: 100, types: b.types, batch: 100 });
    for (let i = 0; i < 3; i++) {
      await sleep(500); // pacing: the interval between cuts, not a wait for anything
      proxy.cutAll();
    }
    const rows = await writer;
    const r = await deliveredExactlyOnce(b, rows);
    process.stdout.write(`[eos proxy cuts] lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
  }, 240_000);

  it('mode switches on one slot: at-least-once → exactly-once (no checkpoint yet) → at-least-once → exactly-once, and worker counts 2 → 0, nothing lost', async () => {
    await using b = await eos();
    // At-least-once publishes from 2 worker threads, then (after the exactly-once phases) from
    // the main thread: a change of sink.kafka.workers between runs.
    const alo = (workers: number) => ({ OUTBOXD_TEST_DELIVERY: 'at-least-once', OUTBOXD_TEST_WORKERS: String(workers) });
    const all: OutboxRow[] = [];
    const phase = async (env: NodeJS.ProcessEnv, work: (relay: RelayProcess) => Promise<void>) => {
      const relay = b.start(env);
      await relay.ready();
      await work(relay);
      relay.kill('SIGTERM');
      expect(await relay.exited).toBe(0);
      return relay;
    };
    let phases = 0;
    const write = async (total: number) => {
      const rows = await writeOutbox(b.db.client, { total, keys: 50, types: b.types, keyPrefix: `p${++phases}-` });
      all.push(...rows);
      await waitDelivered(
        b.reader,
        rows.map((r) => r.id),
      );
    };
    await phase(alo(2), () => write(1_000));
    const first = await phase({}, () => write(1_000));
    expect(first.stderr).toMatch(/no checkpoint yet/);
    // Kills in exactly-once: still nothing twice.
    let relay = b.start();
    await relay.ready();
    const writer = writeOutbox(b.db.client, { total: 4_000, keys: 50, types: b.types, batch: 50, keyPrefix: 'kills-' });
    for (let i = 0; i < 3; i++) {
      await sleep(400); // pacing: the interval between kills, not a wait for anything
      relay.kill('SIGKILL');
      await relay.exited;
      relay = b.start();
      await relay.ready();
    }
    all.push(...(await writer));
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
    await phase(alo(0), () => write(1_000));
    // Back to exactly-once: the checkpoint is behind the slot now; nothing after the slot is skipped.
    const last = await phase({}, () => write(1_000));
    expect(last.stderr).toMatch(/resuming after the checkpoint/);
    const r = await deliveredExactlyOnce(b, all);
    process.stdout.write(`[mode switches] rows=${all.length} lost=${r.lost} duplicates=${r.duplicates}\n`);
    expect(r.lost).toBe(0);
    expect(r.duplicates).toBe(0);
    expect(r.violations).toEqual([]);
  }, 240_000);

  it('a message the broker refuses: committed before it, dead-lettered in its own transaction, the rest after it, each once', async () => {
    await using b = await eos({ onPoison: 'dead-letter' });
    const topic = `outbox.event.${b.types[0]}`;
    await limitTopicMessageBytes(topic, 4096);
    const relay = b.start();
    await relay.ready();
    await insertOneTooLarge(b);
    await expectOneTooLargeDeadLettered(b, topic);
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
    expect(await relay.metric('outboxd_kafka_transactions_total', { result: 'aborted' })).toBeGreaterThanOrEqual(1);
  }, 120_000);

  it('a missing checkpoint topic (autoCreateTopics false), or one whose checkpoint of this transactional id is another database’s: a one-line error, no restart from zero', async () => {
    // With autoCreateTopics true the relay creates a missing checkpoint topic (exactly-once-create.test.ts).
    await using b = await eos({ sinkExtra: '    autoCreateTopics: false\n' });
    const missing = b.start({ OUTBOXD_TEST_CHECKPOINT_TOPIC: `absent_${b.db.slot}` });
    expect(await missing.exited).toBe(1);
    const fatal = missing.logLines().find((l) => l.level === 'fatal');
    expect(String(fatal?.msg)).toMatch(
      new RegExp(`checkpoint topic "absent_${b.db.slot}" does not exist and sink.kafka.autoCreateTopics is false.*outboxd setup`),
    );
    expect(String(fatal?.msg)).not.toContain('\n');

    // Another database's checkpoint under this relay's transactional id.
    const topic = `ckpt_${b.db.name.slice(2, 8)}`;
    const kafka = new kafkajs.Kafka({ brokers: await kafkaBrokers(), logLevel: kafkajs.logLevel.NOTHING });
    const producer = kafka.producer();
    await producer.connect();
    await producer.send({
      topic,
      messages: [
        {
          key: `${b.db.slot}@1234567890/elsewhere`,
          partition: 0,
          value: JSON.stringify({
            v: 1,
            transactionalId: `outboxd-${b.db.slot}`,
            slot: b.db.slot,
            systemId: '1234567890',
            database: 'elsewhere',
            lsn: '0/10',
            index: 0,
          }),
        },
      ],
    });
    await producer.disconnect();
    const foreign = b.start();
    expect(await foreign.exited).toBe(1);
    const msg = String(foreign.logLines().find((l) => l.level === 'fatal')?.msg);
    expect(msg).toMatch(/another database \(system 1234567890, database elsewhere\).*give each relay its own sink\.kafka\.transactionalId/);
    // It fenced no one and published nothing.
    expect(b.reader.delivered()).toEqual([]);
  }, 120_000);

  it('outboxd setup creates the checkpoint topic compacted; validate --connect checks it and names a wrong policy', async () => {
    await using b = await eos();
    const topic = `ckpt_setup_${b.db.slot}`;
    const env = { ...process.env, OUTBOXD_TEST_CHECKPOINT_TOPIC: topic };
    const setup = spawnSync(process.execPath, [MAIN, 'setup', '-c', b.configFile], { encoding: 'utf8', env, timeout: 60_000 });
    expect(setup.stdout).toContain(`-- checkpoint topic ${topic}: created`);
    expect(setup.status).toBe(0);
    const ok = spawnSync(process.execPath, [MAIN, 'validate', '-c', b.configFile, '--connect'], { encoding: 'utf8', env, timeout: 90_000 });
    expect(ok.stdout).toMatch(new RegExp(`ok +checkpoint topic ${topic} cleanup.policy`));
    expect(ok.stdout).toMatch(new RegExp(`ok +checkpoint topic ${topic} write`));
    expect(ok.stdout).toMatch(new RegExp(`ok +checkpoint topic ${topic} read`));
    expect(ok.stdout).not.toMatch(/fail +checkpoint/);

    const admin = new kafkajs.Kafka({ brokers: await kafkaBrokers(), logLevel: kafkajs.logLevel.NOTHING }).admin();
    await admin.connect();
    await admin.alterConfigs({
      validateOnly: false,
      resources: [{ type: kafkajs.ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'cleanup.policy', value: 'delete' }] }],
    });
    await admin.disconnect();
    const bad = spawnSync(process.execPath, [MAIN, 'validate', '-c', b.configFile, '--connect'], {
      encoding: 'utf8',
      env,
      timeout: 90_000,
    });
    expect(bad.stdout).toMatch(/fail +checkpoint topic \S+ cleanup.policy: is "delete"; must be "compact" alone/);
    expect(bad.status).not.toBe(0);
  }, 180_000);
});
