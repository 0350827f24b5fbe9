/**
 * outboxd benchmark suite (issue 6). `npm run bench` for the full run, `npm run bench:smoke` for
 * the 10,000-row version that CI runs (asserts only that every consumer drained everything).
 * docs/benchmarks.md describes the method and every knob; the knobs are environment variables:
 *
 *   BENCH_RUNS=3                runs per consumer for drain, small-tx and memory (headline = median)
 *   BENCH_ROWS=1000000          rows of the reference backlog (drain)
 *   BENCH_AMQP_ROWS=250000      RabbitMQ consumers (outboxd-rabbitmq*, bare-amqplib*) are timed on the
 *                               first N rows of a backlog: the broker takes ~9k msgs/s here
 *   BENCH_SMALLTX_ROWS=200000   one-row transactions (small-tx)
 *   BENCH_MEMORY_ROWS=100000    the small backlog compared with the reference one (memory)
 *   BENCH_LATENCY_RATE=2000     transactions per second (latency)
 *   BENCH_LATENCY_SECONDS=60
 *   BENCH_LATENCY_WARMUP_SECONDS=15   the same load first, not measured: a warm broker's latency (0: none)
 *   BENCH_BROKER_WARMUP_SECONDS=60   before anything is measured, Kafka transactions and batches
 *                               for this long: a warm broker's JIT (0: none)
 *   BENCH_WARMUP_ROWS=100000    before a drain's first run, each consumer drains this many of the
 *                               backlog's rows (at most a tenth), not measured: a warm broker (0: none)
 *   BENCH_LATENCY_SINKS=kafka,kafka-eos,rabbitmq   (and kafka-baseline, kafka-eos-baseline with BENCH_BASELINE_REF)
 *   BENCH_SHAPE_ROWS=100:500000,1024:300000,10240:60000   rows per cell, by payload bytes
 *   BENCH_SHAPE_RUNS=1
 *   BENCH_SOAK_RATE=2000, BENCH_SOAK_SECONDS=3600, BENCH_SOAK_WARMUP_SECONDS=300   soak (asked for
 *                               by name: --scenario soak; 20 s in the smoke run)
 *   BENCH_SHARDS=1,2,3          shard counts of the shards scenario (issue 25): the reference
 *                               backlog (BENCH_ROWS) into Kafka by N relays at once, for each N
 *   BENCH_SCENARIOS=drain,small-tx,memory,shards,shape,latency   (and soak)
 *   BENCH_CONSUMERS=…           subset of pg_recvlogical,outboxd-discard,outboxd-stdout,
 *                               outboxd-kafka,outboxd-kafka-eos,outboxd-kafka-main (no worker
 *                               threads),outboxd-kafka-w1..w3 (1 to 3 workers),outboxd-kafka-baseline,
 *                               outboxd-kafka-eos-baseline, outboxd-kafka-w1-baseline, outboxd-kafka-lz4 (lz4, against
 *                               outboxd-kafka), bare-kafkajs,bare-platformatic,
 *                               outboxd-rabbitmq,bare-amqplib, bare-amqplib-batch, and the RabbitMQ
 *                               layouts outboxd-rabbitmq-ch4, -hash4, -hash4-ch4, -quorum
 *                               (docs/benchmarks.md; all by default, the baselines only with
 *                               BENCH_BASELINE_REF; outboxd-kafka runs with the default worker count)
 *   BENCH_BASELINE_REF=<commit> also run that commit's outboxd as outboxd-kafka-baseline,
 *                               outboxd-kafka-eos-baseline (exactly-once), outboxd-kafka-w1-baseline
 *                               (one worker thread) and outboxd-rabbitmq-baseline
 *   BENCH_PIPELINE='batchMaxMessages: 2000, linger: 5ms'   extra outboxd pipeline settings
 *   BENCH_OUTBOXD_NODE_OPTIONS='--max-old-space-size=64'   NODE_OPTIONS of every outboxd process
 *   BENCH_OUTBOXD_NODE_FLAGS='--max-semi-space-size=16'   node flags of every outboxd process,
 *                               run with exactly those, not outboxd's own ('' for V8's defaults)
 *   BENCH_COMPRESSION=none      sink.kafka.compression of every outboxd Kafka consumer (none, gzip,
 *                               snappy, lz4, zstd); the drain table then shows the MiB the broker stores
 *   BENCH_PROFILE=1             outboxd-discard and outboxd-kafka under node --cpu-prof
 *   OUTBOXD_BENCH_PG_URL, OUTBOXD_BENCH_KAFKA, OUTBOXD_BENCH_AMQP   use running services
 *
 * Flags set the same knobs: --scenario drain (BENCH_SCENARIOS), --consumers outboxd-kafka
 * (BENCH_CONSUMERS), --rows N (BENCH_ROWS), --runs N (BENCH_RUNS), --compression lz4
 * (BENCH_COMPRESSION), --shards 1,2,3 (BENCH_SHARDS); e.g. `npm run bench -- --scenario drain --consumers outboxd-kafka --compression lz4`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, homedir, totalmem } from 'node:os';
import { join } from 'node:path';
import { type Backlog, type BacklogSpec, createBacklog, dropBacklog, preparePool, prefixOf } from './lib/backlog.js';
import { BrokerAdmin } from './lib/brokers.js';
import { warmKafka } from './lib/warm-broker.js';
import {
  type BenchContext,
  CONSUMERS,
  type ConsumerName,
  type ConsumerResult,
  onKafka,
  rabbitLayout,
  runConsumer,
} from './lib/consumers.js';
import { note } from './lib/log.js';
import { MAIN, RESULTS_DIR, ROOT } from './lib/paths.js';
import { connect } from './lib/pg.js';
import { summarizeProfiles } from './lib/profile.js';
import { type Services, startServices } from './lib/services.js';
import {
  type MemorySummary,
  type ScenarioSummary,
  type ShapeCell,
  latencyTable,
  soakTable,
  memorySummary,
  memoryTable,
  scenarioTable,
  shapeCell,
  shapeTable,
  summarize,
  targets,
  targetsTable,
} from './lib/summary.js';
import { shapeSvg } from './lib/svg.js';
import { LATENCY_SINKS, type LatencyResult, type LatencySink, runLatency } from './scenarios/latency.js';
import { type ShardsOutcome, runShards, shardsTable } from './scenarios/shards.js';
import { type SoakResult, runSoak } from './scenarios/soak.js';

const SCENARIOS = ['drain', 'small-tx', 'memory', 'shards', 'shape', 'latency', 'soak'] as const;
type Scenario = (typeof SCENARIOS)[number];

const smoke = process.argv.includes('--smoke');

/** `--name value` or `--name=value` flags, as the environment knobs they stand for. */
const FLAGS: Record<string, string> = {
  scenario: 'BENCH_SCENARIOS',
  scenarios: 'BENCH_SCENARIOS',
  consumers: 'BENCH_CONSUMERS',
  rows: 'BENCH_ROWS',
  runs: 'BENCH_RUNS',
  compression: 'BENCH_COMPRESSION',
  shards: 'BENCH_SHARDS',
};
for (let i = 2; i < process.argv.length; i++) {
  const m = /^--([a-z]+)(?:=(.*))?$/.exec(process.argv[i] as string);
  if (!m || m[1] === 'smoke') continue;
  const env = FLAGS[m[1] as string];
  const value = m[2] ?? process.argv[++i];
  if (env === undefined || value === undefined)
    throw new Error(`unknown flag or missing value: ${process.argv[i]}; flags: --${Object.keys(FLAGS).join(', --')}`);
  process.env[env] = value;
}
const COMPRESSIONS = ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const;

function envInt(name: string, full: number, smokeValue: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return smoke ? smokeValue : full;
  const n = Number(raw.replace(/_/g, ''));
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, got "${raw}"`);
  return n;
}

/** As envInt, where 0 is allowed (it turns the thing off). */
function envCount(name: string, full: number, smokeValue: number): number {
  const raw = process.env[name];
  if (raw === '0') return 0;
  return raw === undefined || raw === '' ? (smoke ? smokeValue : full) : envInt(name, full, smokeValue);
}

function envList<T extends string>(name: string, all: readonly T[], fallback: readonly T[] = all): T[] {
  const raw = process.env[name];
  if (!raw) return [...fallback];
  const items = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  const bad = items.filter((i) => !(all as readonly string[]).includes(i));
  if (bad.length) throw new Error(`${name}: unknown ${bad.join(', ')}; choose from ${all.join(', ')}`);
  return items as T[];
}

function shapeRows(): Map<number, number> {
  const m = new Map<number, number>(
    smoke
      ? [
          [100, 1_000],
          [1024, 1_000],
          [10240, 1_000],
        ]
      : [
          [100, 500_000],
          [1024, 300_000],
          [10240, 60_000],
        ],
  );
  for (const part of (process.env.BENCH_SHAPE_ROWS ?? '').split(',').filter(Boolean)) {
    const [p, n] = part.split(':').map((s) => Number(s.trim()));
    if (!p || !n) throw new Error(`BENCH_SHAPE_ROWS: "${part}" is not payloadBytes:rows`);
    m.set(p, n);
  }
  return m;
}

/** `batchMaxMessages: 5000, linger: 2ms` → YAML lines under `pipeline:`. */
function pipelineYaml(raw: string | undefined): { yaml: string; batch: number } {
  let batch = 2000;
  if (!raw) return { yaml: '', batch };
  const lines: string[] = [];
  for (const part of raw.split(',').filter((s) => s.trim())) {
    const [k, v] = part.split(/[:=]/).map((s) => s.trim());
    if (!k || !v) throw new Error(`BENCH_PIPELINE: "${part}" is not key: value`);
    lines.push(`  ${k}: ${v}`);
    if (k === 'batchMaxMessages') batch = Number(v);
  }
  return { yaml: lines.join('\n'), batch };
}

const config = {
  smoke,
  runs: envInt('BENCH_RUNS', 3, 1),
  rows: envInt('BENCH_ROWS', 1_000_000, 10_000),
  rowsPerTxn: envInt('BENCH_ROWS_PER_TXN', 100, 100),
  payloadBytes: envInt('BENCH_PAYLOAD_BYTES', 300, 300),
  keys: envInt('BENCH_KEYS', 10_000, 10_000),
  smallTxRows: envInt('BENCH_SMALLTX_ROWS', 200_000, 10_000),
  amqpRows: envInt('BENCH_AMQP_ROWS', 250_000, 1_000_000_000),
  memoryRows: envInt('BENCH_MEMORY_ROWS', 100_000, 1_000),
  latencyRate: envInt('BENCH_LATENCY_RATE', 2_000, 2_000),
  latencySeconds: envInt('BENCH_LATENCY_SECONDS', 60, 5),
  latencyWarmupSeconds: envCount('BENCH_LATENCY_WARMUP_SECONDS', 15, 0),
  warmupRows: envCount('BENCH_WARMUP_ROWS', 100_000, 0),
  brokerWarmupSeconds: envCount('BENCH_BROKER_WARMUP_SECONDS', 60, 0),
  soakRate: envInt('BENCH_SOAK_RATE', 2_000, 2_000),
  soakSeconds: envInt('BENCH_SOAK_SECONDS', 3_600, 20),
  soakWarmupSeconds: envInt('BENCH_SOAK_WARMUP_SECONDS', 300, 5),
  latencySinks: envList<LatencySink>(
    'BENCH_LATENCY_SINKS',
    LATENCY_SINKS,
    LATENCY_SINKS.filter((s) => !s.endsWith('-baseline') || process.env.BENCH_BASELINE_REF),
  ),
  shapeRuns: envInt('BENCH_SHAPE_RUNS', 1, 1),
  shapeRows: Object.fromEntries(shapeRows()),
  shapeRowsPerTxn: [1, 10, 100, 1000],
  kafkaPartitions: envInt('BENCH_KAFKA_PARTITIONS', 3, 3),
  // The soak takes an hour: asked for by name, except in the smoke run (20 s).
  scenarios: envList<Scenario>('BENCH_SCENARIOS', SCENARIOS, smoke ? SCENARIOS : SCENARIOS.filter((s) => s !== 'soak')),
  consumers: envList<ConsumerName>(
    'BENCH_CONSUMERS',
    CONSUMERS,
    CONSUMERS.filter((c) => !c.endsWith('-baseline') || process.env.BENCH_BASELINE_REF),
  ),
  /** A commit to build and run as the outboxd-kafka-baseline consumer (the code before a change). */
  baselineRef: process.env.BENCH_BASELINE_REF ?? null,
  shapeConsumers: envList<ConsumerName>('BENCH_SHAPE_CONSUMERS', CONSUMERS, ['pg_recvlogical', 'outboxd-discard']),
  memoryConsumers: envList<ConsumerName>('BENCH_MEMORY_CONSUMERS', CONSUMERS, ['outboxd-discard', 'outboxd-kafka']),
  pipeline: process.env.BENCH_PIPELINE ?? '',
  outboxdNodeOptions: process.env.BENCH_OUTBOXD_NODE_OPTIONS ?? '',
  outboxdNodeFlags:
    process.env.BENCH_OUTBOXD_NODE_FLAGS === undefined ? null : process.env.BENCH_OUTBOXD_NODE_FLAGS.split(/\s+/).filter(Boolean),
  profile: process.env.BENCH_PROFILE === '1',
  profileConsumers: envList<ConsumerName>('BENCH_PROFILE_CONSUMERS', CONSUMERS, ['outboxd-discard', 'outboxd-kafka']),
  recvlogical: join(process.env.BENCH_PG_BINDIR ?? '/usr/lib/postgresql/15/bin', 'pg_recvlogical'),
  compression: (envList('BENCH_COMPRESSION', COMPRESSIONS, ['none'])[0] ?? 'none') as (typeof COMPRESSIONS)[number],
  shardCounts: shardCounts(process.env.BENCH_SHARDS ?? '1,2,3'),
};

/** BENCH_SHARDS: `1,2,3` → [1, 2, 3] (postgres.shard.count allows 1 to 64). */
function shardCounts(raw: string): number[] {
  const counts = raw
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (counts.length === 0 || counts.some((n) => !Number.isInteger(n) || n < 1 || n > 64))
    throw new Error(`BENCH_SHARDS must be shard counts from 1 to 64, e.g. 1,2,3; got "${raw}"`);
  return counts;
}

function has(s: Scenario): boolean {
  return config.scenarios.includes(s);
}

/** Drains `b` with each consumer, `runs` times; the order rotates from run to run. */
async function drainAll(ctx: BenchContext, b: Backlog, consumers: readonly ConsumerName[], runs: number): Promise<ConsumerResult[]> {
  const results: ConsumerResult[] = [];
  // A warm broker (issue 24): its JIT has compiled the code paths each consumer takes (the first
  // exactly-once run of an invocation cost the broker 1.5–2× the CPU of the runs after it).
  const warmRows = Math.min(config.warmupRows, Math.floor(b.rows / 10));
  if (warmRows > 0) {
    note(`${b.name} warm-up (not measured): each consumer drains the first ${warmRows} rows`);
    for (const c of consumers) {
      const r = await runConsumer(ctx, b, c, 0, prefixOf(b, warmRows));
      if (!r.ok) note(`warm-up: ${c} failed (its measured runs will show why)`);
    }
  }
  for (let run = 1; run <= runs; run++) {
    const order = consumers.map((_, i) => consumers[(i + run - 1) % consumers.length] as ConsumerName);
    note(`${b.name} run ${run}/${runs}: ${order.join(', ')}`);
    for (const c of order) {
      const capped = rabbitLayout(c) !== null && config.amqpRows < b.rows;
      results.push(await runConsumer(ctx, b, c, run, capped ? prefixOf(b, config.amqpRows) : undefined));
    }
  }
  return results;
}

async function main(): Promise<number> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: npm run build first`);
  if (!existsSync(config.recvlogical))
    throw new Error(`${config.recvlogical} not found (apt-get install postgresql-15, or set BENCH_PG_BINDIR)`);
  const allConsumers = new Set<ConsumerName>([
    ...(has('drain') || has('small-tx') ? config.consumers : []),
    ...(has('shape') ? config.shapeConsumers : []),
    ...(has('memory') ? config.memoryConsumers : []),
  ]);
  const needKafka = has('latency') || has('soak') || has('shards') || [...allConsumers].some(onKafka);
  const needRabbit = has('latency') || [...allConsumers].some((c) => c.includes('rabbit') || c.includes('amqp'));
  const startedAt = new Date();
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  mkdirSync(RESULTS_DIR, { recursive: true });
  const profileDir = config.profile ? join(RESULTS_DIR, `${stamp}-profiles`) : null;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  note(
    `outboxd bench${smoke ? ' (smoke)' : ''}: scenarios ${config.scenarios.join(', ')}; ${config.runs} run(s); outboxd node flags: ${config.outboxdNodeFlags === null ? 'its own (src/runtime.ts)' : config.outboxdNodeFlags.join(' ') || "none (V8's defaults)"}`,
  );

  const services: Services = await startServices({ kafka: needKafka, rabbitmq: needRabbit });
  const db = await connect(services.dbUrl);
  const brokers = new BrokerAdmin(services.kafka, services.amqpUrl);
  const output: Record<string, unknown> = {};
  const results: Record<string, ConsumerResult[]> = {};
  const sums: {
    drain?: ScenarioSummary;
    smallTx?: ScenarioSummary;
    memory?: MemorySummary[];
    latency?: LatencyResult[];
    shape?: ShapeCell[];
    soak?: SoakResult;
    shards?: ShardsOutcome;
  } = {};
  const tables: string[] = [];
  const t0 = performance.now();
  try {
    await brokers.open();
    await preparePool(db);
    if (services.kafka) await warmKafka(services.kafka, brokers, config.brokerWarmupSeconds, config.kafkaPartitions);
    const { yaml, batch } = pipelineYaml(config.pipeline);
    const ctx: BenchContext = {
      services,
      db,
      brokers,
      tag: Math.random().toString(16).slice(2, 6),
      pipelineYaml: yaml,
      bareBatch: batch,
      kafkaPartitions: config.kafkaPartitions,
      recvlogical: config.recvlogical,
      profileDir,
      profileConsumers: new Set(config.profileConsumers),
      outboxdNodeOptions: config.outboxdNodeOptions,
      outboxdNodeFlags: config.outboxdNodeFlags,
      baselineMain: config.baselineRef ? buildBaseline(config.baselineRef) : null,
      compression: config.compression,
    };
    const spec = (name: string, rows: number, rowsPerTxn: number, payloadBytes = config.payloadBytes): BacklogSpec => ({
      name,
      rows,
      rowsPerTxn,
      payloadBytes,
      keys: config.keys,
    });

    let drainSummary: ScenarioSummary | undefined;
    if (has('drain') || has('memory')) {
      const b = await createBacklog(db, spec('ref', config.rows, config.rowsPerTxn));
      const consumers = has('drain') ? config.consumers : config.memoryConsumers;
      results.drain = await drainAll(ctx, b, consumers, config.runs);
      drainSummary = summarize(b, results.drain);
      if (has('drain')) {
        sums.drain = drainSummary;
        tables.push(scenarioTable('drain', drainSummary));
      }
      await dropBacklog(db, b);
    }
    if (has('memory') && drainSummary) {
      const b = await createBacklog(db, spec('mem', config.memoryRows, config.rowsPerTxn));
      results.memory = await drainAll(ctx, b, config.memoryConsumers, config.runs);
      const small = summarize(b, results.memory);
      tables.push(scenarioTable('memory (small backlog)', small));
      const large = results.drain ?? [];
      sums.memory = config.memoryConsumers
        .map((c) => memorySummary(c, small, drainSummary, large))
        .filter((m): m is MemorySummary => m !== null);
      tables.push(memoryTable(sums.memory));
      output.memoryBacklog = small;
      await dropBacklog(db, b);
    }
    if (has('small-tx')) {
      const b = await createBacklog(db, spec('smalltx', config.smallTxRows, 1));
      results.smallTx = await drainAll(ctx, b, config.consumers, config.runs);
      sums.smallTx = summarize(b, results.smallTx);
      tables.push(scenarioTable('small-tx', sums.smallTx));
      await dropBacklog(db, b);
    }
    if (has('shards')) {
      sums.shards = await runShards(ctx, spec('shards', config.rows, config.rowsPerTxn), config.shardCounts, config.runs);
      tables.push(shardsTable(sums.shards));
    }
    if (has('shape')) {
      sums.shape = [];
      results.shape = [];
      for (const payload of Object.keys(config.shapeRows).map(Number)) {
        for (const perTxn of config.shapeRowsPerTxn) {
          const rows = config.shapeRows[payload] as number;
          const b = await createBacklog(db, spec(`shape_${payload}_${perTxn}`, rows, perTxn, payload));
          const rs = await drainAll(ctx, b, config.shapeConsumers, config.shapeRuns);
          results.shape.push(...rs);
          sums.shape.push(shapeCell(b, rs));
          await dropBacklog(db, b);
        }
      }
      tables.push(shapeTable(sums.shape));
    }
    if (has('latency')) {
      sums.latency = [];
      for (const sink of config.latencySinks) {
        sums.latency.push(await runLatency(ctx, sink, config.latencyRate, config.latencySeconds, config.latencyWarmupSeconds));
      }
      tables.push(latencyTable(sums.latency));
    }
    if (has('soak')) {
      sums.soak = await runSoak(ctx, config.soakRate, config.soakSeconds, config.soakWarmupSeconds);
      tables.push(soakTable(sums.soak));
    }
  } finally {
    await brokers.close();
    await db.end().catch(() => undefined);
    await services.close();
  }

  const ts = targets(sums);
  tables.push(targetsTable(ts));
  const wallSeconds = (performance.now() - t0) / 1000;
  const file = join(RESULTS_DIR, `${stamp}${smoke ? '-smoke' : ''}.json`);
  const doc = {
    startedAt: startedAt.toISOString(),
    wallSeconds: Math.round(wallSeconds),
    host: {
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model ?? '',
      memGiB: Math.round(totalmem() / 2 ** 30),
      node: process.version,
    },
    services: { origin: services.origin, postgres: services.pgVersion, ...services.versions },
    config,
    summary: {
      targets: ts,
      drain: sums.drain,
      smallTx: sums.smallTx,
      memory: sums.memory,
      shape: sums.shape,
      latency: sums.latency,
      soak: sums.soak,
      shards: sums.shards && {
        backlog: sums.shards.backlog,
        counts: sums.shards.summary,
        decodeUsPerEvent: sums.shards.decodeUsPerEvent,
        walsenderFit: sums.shards.walsenderFit,
        probes: sums.shards.probes,
      },
      ...output,
    },
    results: { ...results, ...(sums.shards ? { shards: sums.shards.runs } : {}) },
  };
  writeFileSync(file, `${JSON.stringify(doc, null, 2)}\n`);
  // bench/** is in biome's scope (npm run lint): lay the JSON out the way biome formats it.
  try {
    execFileSync(join(ROOT, 'node_modules', '.bin', 'biome'), ['format', '--write', file], { stdio: 'ignore' });
  } catch {
    // biome is a dev dependency; without it the JSON is still valid, only differently laid out.
  }
  if (sums.shape?.length) {
    const svg = join(RESULTS_DIR, `${stamp}${smoke ? '-smoke' : ''}-shape.svg`);
    writeFileSync(
      svg,
      shapeSvg(sums.shape, `${cpus().length} cores, Postgres ${services.pgVersion}, ${startedAt.toISOString().slice(0, 10)}`),
    );
  }
  process.stdout.write(`\n${tables.join('\n\n')}\n\nresults: ${file}\nwall time: ${(wallSeconds / 60).toFixed(1)} min\n`);
  if (profileDir) process.stdout.write(`\n${summarizeProfiles(profileDir, 25)}\n`);

  const failures = Object.values(results)
    .flat()
    .filter((r) => !r.ok);
  const latencyFailures = (sums.latency ?? []).filter((l) => !l.ok);
  const soakFailed = sums.soak !== undefined && !sums.soak.ok;
  const shardFailures = (sums.shards?.runs ?? []).filter((r) => !r.ok);
  if (failures.length > 0 || latencyFailures.length > 0 || soakFailed || shardFailures.length > 0) {
    for (const f of failures) process.stderr.write(`FAILED ${f.backlog} ${f.consumer} run ${f.run}: ${f.error?.split('\n')[0]}\n`);
    for (const l of latencyFailures) process.stderr.write(`FAILED latency ${l.sink}: ${l.error?.split('\n')[0]}\n`);
    if (soakFailed) process.stderr.write(`FAILED soak: ${sums.soak?.error?.split('\n')[0]}\n`);
    for (const r of shardFailures) process.stderr.write(`FAILED shards ${r.shards} run ${r.run}: ${r.error?.split('\n')[0]}\n`);
    return 1;
  }
  if (smoke) process.stdout.write('smoke: every consumer drained every backlog\n');
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);

/**
 * Builds `ref` in a git worktree beside the repository (sharing its node_modules) and returns
 * its dist/main.js: the outboxd-kafka-baseline consumer, the code before a change in the same run.
 */
function buildBaseline(ref: string): string {
  const dir = join(homedir(), '.cache', 'outboxd', `bench-baseline-${ref.replace(/[^A-Za-z0-9._-]/g, '_')}`);
  const main = join(dir, 'dist', 'main.js');
  if (!existsSync(main)) {
    note(`building baseline ${ref} in ${dir}`);
    execFileSync('git', ['worktree', 'add', '--force', '--detach', dir, ref], { cwd: ROOT, stdio: 'pipe' });
    symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
    execFileSync(join(ROOT, 'node_modules', '.bin', 'tsc'), ['-p', 'tsconfig.build.json'], { cwd: dir, stdio: 'pipe' });
  }
  const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: dir, encoding: 'utf8' }).trim();
  note(`baseline: ${ref} (${head}) from ${main}`);
  return main;
}
