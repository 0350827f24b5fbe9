import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import amqp from 'amqplib';
import kafkajs from 'kafkajs';
import type pg from 'pg';
import { getFreePort } from '../../test/harness/ports.js';
import { createOutboxTable } from '../lib/backlog.js';
import { writeSteadily } from '../lib/steady-writer.js';
import { type Child, startChild, stopChild } from '../lib/child.js';
import { type BenchContext, metricSum, nodeArgs, outboxdEnv, relayYaml, scrape } from '../lib/consumers.js';
import { note, sleep } from '../lib/log.js';
import { MAIN, ROOT } from '../lib/paths.js';
import { connect, dropSlot } from '../lib/pg.js';
import { cpuSeconds, memory } from '../lib/procfs.js';
import { CONFLUENT_KAFKA, rdkafkaPython } from '../lib/python.js';
import { type Buckets, histogramMaxBound, histogramQuantile, histogramSince, parseHistogram, quantileSorted } from '../lib/stats.js';

/**
 * A steady load of one-row transactions at `rate` per second for `seconds`, through outboxd (the
 * real CLI) into Kafka, then RabbitMQ. Two latencies:
 * - commit → broker confirm: outboxd's own `outboxd_commit_to_ack_seconds` histogram (pgoutput
 *   commit time against the moment the broker confirmed); quantiles interpolated in its buckets.
 * - INSERT return → consumer receipt, as a user sees it: from the moment each INSERT's commit
 *   returns to its client to the moment a consumer receives the message. On Kafka the consumer
 *   is librdkafka (confluent-kafka) in a process of its own, reading read_committed; on RabbitMQ
 *   an amqplib consumer in this process. Both stamp wall-clock time on the same host clock.
 * Postgres runs with fsync and full-page writes on for this scenario (the harness turns them off
 * elsewhere), and the Kafka broker with its start script's JVM settings.
 *
 * A warm-up of `warmupSeconds` at the same rate comes first, through the same relay, consumer,
 * topic and slot, and counts in neither latency: the figures are a warm broker's (issue 24), not
 * those of its first transactions after start (a JVM compiling its transaction code paths; the
 * first exactly-once run of an invocation read a p99 of 69 ms against 15 to 27 after it).
 */
export interface LatencyResult {
  /** kafka-eos: Kafka with delivery exactly-once, its consumer reading read_committed. */
  sink: LatencySink;
  ok: boolean;
  error?: string;
  targetRate: number;
  seconds: number;
  /** Seconds of the same load before the measured ones, in neither latency. */
  warmupSeconds: number;
  sent: number;
  received: number;
  achievedRate: number;
  commitToConfirmMs: { count: number; p50: number; p99: number; maxAtMost: number; mean: number } | null;
  insertToReceiptMs: { p50: number; p99: number; max: number; min: number } | null;
  relayCpuSeconds: number | null;
  relayPeakRssMiB: number | null;
  /** Who measured receipt: the consumer's client and process. */
  consumer?: string;
}

const WRITERS = 6;

/** kafka-baseline, kafka-eos-baseline: the Kafka sink of BENCH_BASELINE_REF's build (only when that is set). */
export const LATENCY_SINKS = ['kafka', 'kafka-eos', 'rabbitmq', 'kafka-baseline', 'kafka-eos-baseline'] as const;
export type LatencySink = (typeof LATENCY_SINKS)[number];
const BASELINES: readonly LatencySink[] = ['kafka-baseline', 'kafka-eos-baseline'];

export async function runLatency(
  ctx: BenchContext,
  sink: LatencySink,
  rate: number,
  seconds: number,
  warmupSeconds = 0,
): Promise<LatencyResult> {
  const name = `lat_${{ kafka: 'k', 'kafka-eos': 'e', rabbitmq: 'r', 'kafka-baseline': 'b', 'kafka-eos-baseline': 'f' }[sink]}_${ctx.tag}`;
  const kafka = sink !== 'rabbitmq';
  const eos = sink === 'kafka-eos' || sink === 'kafka-eos-baseline';
  const checkpoints = `bench.${name}.checkpoints`;
  const table = `outbox_${name}`;
  const publication = `pub_${name}`;
  const slot = `c_${name}`;
  const topic = `bench.${name}.order`;
  const queue = `bench.${name}`;
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-bench-'));
  const result: LatencyResult = {
    sink,
    ok: false,
    targetRate: rate,
    seconds,
    warmupSeconds,
    sent: 0,
    received: 0,
    achievedRate: 0,
    commitToConfirmMs: null,
    insertToReceiptMs: null,
    relayCpuSeconds: null,
    relayPeakRssMiB: null,
  };
  const returnedAt = new Map<string, number>();
  const receivedAt = new Map<string, number>();
  // Times are wall-clock milliseconds since the epoch (to the microsecond), so that a consumer
  // in another process, on the same host clock, can be compared with the inserts' returns.
  const wallNow = () => performance.timeOrigin + performance.now();
  const onReceive = (id: string | undefined): void => {
    if (id !== undefined && !receivedAt.has(id)) receivedAt.set(id, wallNow());
  };
  const onReceiveWall = (id: string, atMs: number): void => {
    if (!receivedAt.has(id)) receivedAt.set(id, atMs);
  };
  // Postgres as users run it: fsync and full-page writes on (the harness turns them off).
  const pgDurable = await durable(ctx.db, true);
  let relay: Child | null = null;
  let stopConsumer: () => Promise<void> = async () => undefined;
  const writers: pg.Client[] = [];
  try {
    await createOutboxTable(ctx.db, table, publication);
    await ctx.db.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);

    // The consumer first, so that it is listening before the first row is written.
    let sinkYaml: string;
    if (kafka) {
      await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
      if (eos) await ctx.brokers.createCheckpointTopic(checkpoints);
      const python = rdkafkaPython();
      if (python) {
        // A librdkafka consumer in a process of its own (read_committed), as a user's would be.
        const script = join(ROOT, 'bench', 'children', 'rdkafka-consumer.py');
        const child = startChild(
          python,
          [script, (ctx.services.kafka ?? []).join(','), topic, `bench-${name}`, 'read_committed'],
          process.env,
          {
            stdout: 'pipe',
          },
        );
        result.consumer = `librdkafka (confluent-kafka ${CONFLUENT_KAFKA}), own process, read_committed`;
        let ready!: () => void;
        const assigned = new Promise<void>((r) => {
          ready = r;
        });
        let partial = '';
        child.stdout.on('data', (d: Buffer) => {
          const lines = (partial + d.toString()).split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) {
            if (line.startsWith('READY')) ready();
            const tab = line.indexOf('\t');
            if (tab > 0) onReceiveWall(line.slice(0, tab), Number(line.slice(tab + 1)) / 1e6);
          }
        });
        await Promise.race([
          assigned,
          sleep(60_000).then(() => Promise.reject(new Error(`librdkafka consumer not assigned in 60 s\n${child.stderrTail()}`))),
        ]);
        stopConsumer = () => stopChild(child, 5_000);
      } else {
        result.consumer = 'kafkajs, in the bench process, read_committed';
        const consumer = new kafkajs.Kafka({
          clientId: 'outboxd-bench-latency',
          brokers: ctx.services.kafka ?? [],
          logLevel: kafkajs.logLevel.NOTHING,
        }).consumer({ groupId: `bench-${name}`, maxWaitTimeInMs: 20, readUncommitted: false });
        const joined = new Promise<void>((resolve) => consumer.on(consumer.events.GROUP_JOIN, () => resolve()));
        await consumer.connect();
        await consumer.subscribe({ topics: [topic], fromBeginning: true });
        // No offset commits: this reader exists to timestamp arrivals, as fast as kafkajs fetches.
        await consumer.run({
          autoCommit: false,
          eachMessage: async ({ message }) => {
            onReceive(message.headers?.id?.toString());
          },
        });
        await joined;
        stopConsumer = () => consumer.disconnect().catch(() => undefined);
      }
      sinkYaml = `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n${eos ? `    delivery: exactly-once\n    checkpointTopic: ${checkpoints}\n` : ''}`;
    } else {
      await ctx.brokers.createQueue(queue);
      const conn = await amqp.connect(ctx.services.amqpUrl ?? '');
      conn.on('error', () => undefined);
      const ch = await conn.createChannel();
      await ch.prefetch(2000);
      await ch.consume(queue, (msg) => {
        if (!msg) return;
        onReceive(msg.properties.messageId as string | undefined);
        ch.ack(msg);
      });
      stopConsumer = () => conn.close().catch(() => undefined);
      sinkYaml = `sink:\n  type: rabbitmq\n  rabbitmq:\n    url: ${ctx.services.amqpUrl}\n    exchange: ${queue}\n    declare: true\n`;
    }

    const port = await getFreePort();
    const cfg = join(dir, 'outboxd.yaml');
    writeFileSync(cfg, relayYaml({ dbUrl: ctx.services.dbUrl, slot, publication, table, port, sinkYaml, pipelineYaml: ctx.pipelineYaml }));
    const baseline = BASELINES.includes(sink);
    const main = baseline ? ctx.baselineMain : MAIN;
    if (main === null) throw new Error(`latency ${sink} needs BENCH_BASELINE_REF`);
    relay = startChild(process.execPath, [...nodeArgs(ctx, null, 'latency', baseline), main, 'run', '-c', cfg], outboxdEnv(ctx, baseline));
    await waitReady(port, relay);

    for (let i = 0; i < WRITERS; i++) writers.push(await connect(ctx.services.dbUrl));
    /** How many of `ids` the consumer has received. */
    const receivedOf = (ids: Iterable<string>): number => {
      let n = 0;
      for (const id of ids) if (receivedAt.has(id)) n++;
      return n;
    };
    let before: Buckets | null = null;
    const warm = new Set<string>();
    if (warmupSeconds > 0) {
      const rows = Math.round(rate * warmupSeconds);
      note(`  latency ${sink}: warm-up, ${rows} one-row transactions at ${rate}/s (not measured)`);
      await writeSteadily(writers, table, rate, rows, (id) => warm.add(id));
      const until = performance.now() + 60_000;
      while (receivedOf(warm) < warm.size && performance.now() < until) await sleep(100);
      if (receivedOf(warm) < warm.size) throw new Error(`warm-up: not every one of ${warm.size} rows reached the consumer in 60 s`);
      before = parseHistogram(await scrape(port), 'outboxd_commit_to_ack_seconds');
    }
    const total = Math.round(rate * seconds);
    note(`  latency ${sink}: ${total} one-row transactions at ${rate}/s`);
    const { start, lastReturn } = await writeSteadily(writers, table, rate, total, (id, at) =>
      returnedAt.set(id, performance.timeOrigin + at),
    );
    result.sent = returnedAt.size;
    result.achievedRate = result.sent / ((lastReturn - start) / 1000);
    const deadline = performance.now() + 60_000;
    // The measured rows only: the warm-up's are in receivedAt too.
    while (receivedOf(returnedAt.keys()) < result.sent && performance.now() < deadline) await sleep(100);
    result.received = receivedOf(returnedAt.keys());

    const metrics = await scrape(port);
    const scraped = parseHistogram(metrics, 'outboxd_commit_to_ack_seconds');
    const h = scraped && histogramSince(scraped, before);
    if (h) {
      result.commitToConfirmMs = {
        count: h.count,
        p50: histogramQuantile(h, 0.5) * 1000,
        p99: histogramQuantile(h, 0.99) * 1000,
        maxAtMost: histogramMaxBound(h) * 1000,
        mean: (h.sum / h.count) * 1000,
      };
    }
    result.relayCpuSeconds = cpuSeconds(relay.pid);
    result.relayPeakRssMiB = memory(relay.pid)?.peakMiB ?? null;
    const published = metricSum(metrics, 'outboxd_messages_published_total') - warm.size;

    const lat: number[] = [];
    for (const [id, t] of returnedAt) {
      const r = receivedAt.get(id);
      if (r !== undefined) lat.push(r - t);
    }
    lat.sort((a, b) => a - b);
    if (lat.length > 0) {
      result.insertToReceiptMs = {
        p50: quantileSorted(lat, 0.5),
        p99: quantileSorted(lat, 0.99),
        max: lat[lat.length - 1] as number,
        min: lat[0] as number,
      };
    }
    result.ok = result.received === result.sent && published >= result.sent;
    if (!result.ok) result.error = `sent ${result.sent}, received ${result.received}, outboxd published ${published}`;
    const c = result.commitToConfirmMs;
    const e = result.insertToReceiptMs;
    note(
      `  latency ${sink}: ${result.achievedRate.toFixed(0)} txn/s achieved; commit→confirm p50 ${c?.p50.toFixed(1)} ms, p99 ${c?.p99.toFixed(1)} ms, max ≤ ${c?.maxAtMost} ms; ` +
        `insert→receipt p50 ${e?.p50.toFixed(1)} ms, p99 ${e?.p99.toFixed(1)} ms, max ${e?.max.toFixed(1)} ms${result.error ? `; ${result.error}` : ''}`,
    );
  } catch (err) {
    result.ok = false;
    result.error = (err as Error).message;
    note(`  latency ${sink} FAILED: ${result.error.split('\n')[0]}`);
  } finally {
    if (relay) await stopChild(relay, 15_000);
    await stopConsumer();
    for (const w of writers) await w.end().catch(() => undefined);
    await dropSlot(ctx.db, slot).catch(() => undefined);
    if (kafka) await ctx.brokers.deleteTopic(topic);
    if (eos) await ctx.brokers.deleteTopic(checkpoints);
    if (sink === 'rabbitmq') await ctx.brokers.deleteQueue(queue);
    if (pgDurable) await durable(ctx.db, false);
    await ctx.db.query(`DROP PUBLICATION IF EXISTS ${publication}`).catch(() => undefined);
    await ctx.db.query(`DROP TABLE IF EXISTS ${table}`).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  return result;
}

/** Resolves once the relay answers /readyz 200; rejects if it exits or 60 s pass. */
export async function waitReady(port: number, relay: Child): Promise<void> {
  const deadline = performance.now() + 60_000;
  for (;;) {
    if (relay.exitedAt !== null) throw new Error(`outboxd exited (${relay.exitCode}) before ready\n${relay.stderrTail().slice(-2000)}`);
    const ok = await fetch(`http://127.0.0.1:${port}/readyz`)
      .then((r) => r.status === 200)
      .catch(() => false);
    if (ok) return;
    if (performance.now() > deadline) throw new Error(`outboxd not ready after 60 s\n${relay.stderrTail().slice(-2000)}`);
    await sleep(100);
  }
}

/** Turns fsync and full-page writes on (or back off); true if it changed anything. */
async function durable(db: pg.Client, on: boolean): Promise<boolean> {
  const { rows } = await db.query<{ fsync: string }>(`SELECT current_setting('fsync') AS fsync`);
  if ((rows[0]?.fsync === 'on') === on) return false;
  const v = on ? 'on' : 'off';
  await db.query(`ALTER SYSTEM SET fsync = ${v}`);
  await db.query(`ALTER SYSTEM SET full_page_writes = ${v}`);
  await db.query('SELECT pg_reload_conf()');
  return true;
}
