import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { getFreePort } from '../../test/harness/ports.js';
import { createOutboxTable } from '../lib/backlog.js';
import { writeSteadily } from '../lib/steady-writer.js';
import { type Child, startChild, stopChild } from '../lib/child.js';
import { type BenchContext, metricSum, nodeArgs, outboxdEnv, relayYaml, scrape } from '../lib/consumers.js';
import { note, sleep } from '../lib/log.js';
import { MAIN } from '../lib/paths.js';
import { connect, dropSlot } from '../lib/pg.js';
import { cpuSeconds, memory } from '../lib/procfs.js';
import { waitReady } from './latency.js';

/**
 * Flat under load (issue 24): outboxd (the real CLI, started as `node dist/main.js`) relays
 * one-row transactions into Kafka at a steady `rate` for `seconds`, and its RSS is sampled every
 * 10 seconds. After the warm-up (`warmupSeconds`: the heap and the caches find their size), the
 * RSS should not grow: the result gives the RSS at the end of the warm-up and at the end (each the
 * median of that minute's samples), their difference, the least-squares slope over everything
 * after the warm-up, and the peak. Nothing is kept per row, so the bench itself stays small over
 * an hour; the topic's message count proves every row arrived.
 */
export interface SoakResult {
  ok: boolean;
  error?: string;
  targetRate: number;
  seconds: number;
  warmupSeconds: number;
  sent: number;
  published: number;
  inTopic: number;
  achievedRate: number;
  /** Median RSS over the minute after the warm-up, and over the last minute (MiB). */
  rssAfterWarmupMiB: number | null;
  rssEndMiB: number | null;
  growthMiB: number | null;
  /** Least-squares slope of the RSS after the warm-up, MiB per minute. */
  slopeMiBPerMinute: number | null;
  peakMiB: number | null;
  relayCpuSeconds: number | null;
  /** [seconds since start, RSS MiB] every 10 s. */
  samples: Array<[number, number]>;
}

const WRITERS = 4;
/** Every 10 s; every second in a run shorter than 5 minutes (the smoke run). */
const sampleMs = (seconds: number) => (seconds < 300 ? 1_000 : 10_000);

export async function runSoak(ctx: BenchContext, rate: number, seconds: number, warmupSeconds: number): Promise<SoakResult> {
  const name = `soak_${ctx.tag}`;
  const table = `outbox_${name}`;
  const publication = `pub_${name}`;
  const slot = `c_${name}`;
  const topic = `bench.${name}.order`;
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-bench-'));
  const result: SoakResult = {
    ok: false,
    targetRate: rate,
    seconds,
    warmupSeconds,
    sent: 0,
    published: 0,
    inTopic: 0,
    achievedRate: 0,
    rssAfterWarmupMiB: null,
    rssEndMiB: null,
    growthMiB: null,
    slopeMiBPerMinute: null,
    peakMiB: null,
    relayCpuSeconds: null,
    samples: [],
  };
  let relay: Child | null = null;
  let sampler: NodeJS.Timeout | null = null;
  const writers: pg.Client[] = [];
  try {
    await createOutboxTable(ctx.db, table, publication);
    await ctx.db.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
    const port = await getFreePort();
    const cfg = join(dir, 'outboxd.yaml');
    const sinkYaml = `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n`;
    writeFileSync(cfg, relayYaml({ dbUrl: ctx.services.dbUrl, slot, publication, table, port, sinkYaml, pipelineYaml: ctx.pipelineYaml }));
    relay = startChild(process.execPath, [...nodeArgs(ctx, null, 'soak'), MAIN, 'run', '-c', cfg], outboxdEnv(ctx));
    await waitReady(port, relay);
    const pid = relay.pid;
    const t0 = performance.now();
    sampler = setInterval(() => {
      const m = memory(pid);
      if (m) result.samples.push([Math.round((performance.now() - t0) / 1000), m.rssMiB]);
    }, sampleMs(seconds));

    for (let i = 0; i < WRITERS; i++) writers.push(await connect(ctx.services.dbUrl));
    const total = Math.round(rate * seconds);
    let lastNote = performance.now();
    note(`  soak: ${total} one-row transactions at ${rate}/s for ${seconds} s into Kafka; RSS every ${sampleMs(seconds) / 1000} s`);
    const { start, lastReturn } = await writeSteadily(writers, table, rate, total, (_, at) => {
      result.sent++;
      if (at - lastNote > 300_000) {
        lastNote = at;
        const last = result.samples.at(-1);
        note(`  soak: ${((at - t0) / 60_000).toFixed(0)} min, ${result.sent} rows, RSS ${last?.[1].toFixed(1)} MiB`);
      }
    });
    result.achievedRate = result.sent / ((lastReturn - start) / 1000);
    const deadline = performance.now() + 60_000;
    for (;;) {
      result.published = metricSum(await scrape(port), 'outboxd_messages_published_total');
      if (result.published >= result.sent || performance.now() > deadline) break;
      await sleep(200);
    }
    clearInterval(sampler);
    sampler = null;
    result.relayCpuSeconds = cpuSeconds(pid);
    result.peakMiB = memory(pid)?.peakMiB ?? null;
    result.inTopic = await ctx.brokers.topicCount(topic);
    Object.assign(result, growth(result.samples, warmupSeconds, seconds));
    result.ok = result.published >= result.sent && result.inTopic >= result.sent;
    if (!result.ok) result.error = `sent ${result.sent}, published ${result.published}, in the topic ${result.inTopic}`;
    note(
      `  soak: ${result.achievedRate.toFixed(0)} txn/s; RSS ${result.rssAfterWarmupMiB?.toFixed(1)} MiB after ${warmupSeconds} s, ` +
        `${result.rssEndMiB?.toFixed(1)} MiB at the end (${result.growthMiB?.toFixed(2)} MiB, slope ${result.slopeMiBPerMinute?.toFixed(3)} MiB/min), peak ${result.peakMiB?.toFixed(1)} MiB`,
    );
  } catch (err) {
    result.ok = false;
    result.error = (err as Error).message;
    note(`  soak FAILED: ${result.error.split('\n')[0]}`);
  } finally {
    if (sampler) clearInterval(sampler);
    if (relay) await stopChild(relay, 15_000);
    for (const w of writers) await w.end().catch(() => undefined);
    await dropSlot(ctx.db, slot).catch(() => undefined);
    await ctx.brokers.deleteTopic(topic);
    await ctx.db.query(`DROP PUBLICATION IF EXISTS ${publication}`).catch(() => undefined);
    await ctx.db.query(`DROP TABLE IF EXISTS ${table}`).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }
  return result;
}

/** RSS after the warm-up and at the end (medians of a minute's samples), growth and slope. */
export function growth(
  samples: ReadonlyArray<[number, number]>,
  warmupS: number,
  endS: number,
): Pick<SoakResult, 'rssAfterWarmupMiB' | 'rssEndMiB' | 'growthMiB' | 'slopeMiBPerMinute'> {
  const window = Math.min(60, Math.max(10, (endS - warmupS) / 4));
  const median = (xs: number[]) => (xs.length === 0 ? null : ([...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number));
  const after = samples.filter(([t]) => t >= warmupS);
  const first = median(after.filter(([t]) => t < warmupS + window).map(([, r]) => r));
  const lastT = after.at(-1)?.[0] ?? 0;
  const last = median(after.filter(([t]) => t > lastT - window).map(([, r]) => r));
  let slope: number | null = null;
  if (after.length >= 3) {
    const n = after.length;
    const mx = after.reduce((s, [t]) => s + t, 0) / n;
    const my = after.reduce((s, [, r]) => s + r, 0) / n;
    const sxy = after.reduce((s, [t, r]) => s + (t - mx) * (r - my), 0);
    const sxx = after.reduce((s, [t]) => s + (t - mx) ** 2, 0);
    slope = sxx > 0 ? (sxy / sxx) * 60 : null;
  }
  return {
    rssAfterWarmupMiB: first,
    rssEndMiB: last,
    growthMiB: first !== null && last !== null ? last - first : null,
    slopeMiBPerMinute: slope,
  };
}
