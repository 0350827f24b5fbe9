import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { getFreePort } from '../../test/harness/ports.js';
import type { Backlog } from './backlog.js';
import type { BrokerAdmin, RabbitLayout } from './brokers.js';
import { type Child, startChild, stopChild } from './child.js';
import { note, sleep } from './log.js';
import { RUNTIME_ENV, RUNTIME_FLAGS } from '../../src/runtime.js';
import { MAIN, benchFile } from './paths.js';
import { type Lsn, copySlot, dropSlot, formatLsn, slotState } from './pg.js';
import { bytesWritten, cpuOf, cpuSeconds, hostCpu, jitOf, memory } from './procfs.js';
import type { Services } from './services.js';

export const CONSUMERS = [
  'pg_recvlogical',
  'outboxd-discard',
  'outboxd-stdout',
  'outboxd-kafka',
  'outboxd-kafka-eos',
  'outboxd-kafka-main',
  'outboxd-kafka-w1',
  'outboxd-kafka-w2',
  'outboxd-kafka-w3',
  'outboxd-kafka-baseline',
  'outboxd-kafka-eos-baseline',
  'outboxd-kafka-w1-baseline',
  'outboxd-kafka-lz4',
  'bare-kafkajs',
  'bare-platformatic',
  'outboxd-rabbitmq',
  'bare-amqplib',
  'bare-amqplib-batch',
  'outboxd-rabbitmq-ch4',
  'outboxd-rabbitmq-hash4',
  'outboxd-rabbitmq-hash4-ch4',
  'outboxd-rabbitmq-quorum',
  'outboxd-rabbitmq-baseline',
] as const;
export type ConsumerName = (typeof CONSUMERS)[number];

export interface BenchContext {
  services: Services;
  /** The orchestrator's connection to the bench database: slot copies and drain polling. */
  db: pg.Client;
  brokers: BrokerAdmin;
  /** Short random tag, unique per bench invocation, in slot/topic/queue names. */
  tag: string;
  /** YAML lines under `pipeline:` for every outboxd (BENCH_PIPELINE), or ''. */
  pipelineYaml: string;
  /** Same batch size / confirm window as outboxd's batchMaxMessages, for the bare clients. */
  bareBatch: number;
  kafkaPartitions: number;
  recvlogical: string;
  /** When set, outboxd runs under `node --cpu-prof` and writes profiles here. */
  profileDir: string | null;
  profileConsumers: ReadonlySet<ConsumerName>;
  /** NODE_OPTIONS for every outboxd process (BENCH_OUTBOXD_NODE_OPTIONS), or ''. */
  outboxdNodeOptions: string;
  /**
   * node flags of every outboxd process (BENCH_OUTBOXD_NODE_FLAGS), run with exactly those; or
   * null: started as `node dist/main.js`, outboxd brings its own (src/runtime.ts).
   */
  outboxdNodeFlags: readonly string[] | null;
  /** dist/main.js of BENCH_BASELINE_REF, built for the *-baseline consumers; or null. */
  baselineMain: string | null;
  /** sink.kafka.compression of every outboxd Kafka consumer (--compression, BENCH_COMPRESSION). */
  compression: string;
}

/**
 * The environment of an outboxd child. Flags given: exactly those (OUTBOXD_RUNTIME=inherit). None
 * given: outboxd's own runtime, which a baseline built before it existed gets from here.
 */
export function outboxdEnv(ctx: BenchContext, baseline = false): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (ctx.outboxdNodeOptions) env.NODE_OPTIONS = ctx.outboxdNodeOptions;
  if (ctx.outboxdNodeFlags !== null) env.OUTBOXD_RUNTIME = 'inherit';
  else if (baseline) Object.assign(env, RUNTIME_ENV, { OUTBOXD_RUNTIME: 'inherit' });
  return env;
}

export interface ConsumerResult {
  consumer: ConsumerName;
  backlog: string;
  run: number;
  ok: boolean;
  error?: string;
  rows: number;
  /** Messages the consumer reports it published, or the broker holds afterwards; null if unknowable. */
  messages: number | null;
  /** Wall time: process start (or, for bare clients, first publish) until everything is confirmed. */
  seconds: number;
  /** From the moment the slot became active (streaming started) until drained. */
  streamSeconds: number | null;
  rowsPerSec: number;
  streamRowsPerSec: number | null;
  payloadMiBps: number;
  walMiBps: number | null;
  /**
   * CPU seconds over the run: the consumer process, the walsender serving it, the broker, and
   * `other`: host CPU no measured process accounts for (Postgres' other processes, the kernel,
   * this orchestrator, and anything else running on the host: a sign of interference).
   */
  cpu: {
    consumer: number | null;
    walsender: number | null;
    broker: number | null;
    /** Of `broker`, its JVM's JIT compiler threads (Kafka): start-up work, not the events'. */
    brokerJit: number | null;
    other: number | null;
  };
  /** The consumer's CPU seconds from the moment the slot became active (start-up excluded). */
  streamCpu: number | null;
  /** Busy share of all host CPUs over the run, 0..100. */
  hostBusyPct: number;
  peakRssMiB: number | null;
  /**
   * The consumer's RSS as the drain went: sampled when the slot's confirmed position first passed
   * each written chunk of the backlog (rows confirmed so far, RSS and peak RSS in MiB).
   */
  rssCurve: Array<{ rows: number; rssMiB: number; peakMiB: number }> | null;
  /** Bytes the broker's log segments hold for the topic when drained (null: not a harness broker, or not Kafka). */
  brokerBytes?: number | null;
  /** outboxd's V8 heap and off-heap memory when drained (its own metrics), MiB. */
  heap: { usedMiB: number; totalMiB: number; externalMiB: number } | null;
  /** Exactly-once: the Kafka transactions outboxd committed (its own counter); null otherwise. */
  transactions?: number | null;
}

const SHORT: Record<ConsumerName, string> = {
  pg_recvlogical: 'rl',
  'outboxd-discard': 'od',
  'outboxd-stdout': 'os',
  'outboxd-kafka': 'ok',
  'outboxd-kafka-eos': 'oe',
  'outboxd-kafka-main': 'o0',
  'outboxd-kafka-w1': 'o1',
  'outboxd-kafka-w2': 'o2',
  'outboxd-kafka-w3': 'o3',
  'outboxd-kafka-baseline': 'ob',
  'outboxd-kafka-eos-baseline': 'of',
  'outboxd-kafka-w1-baseline': 'ow',
  'outboxd-kafka-lz4': 'oz',
  'bare-kafkajs': 'bk',
  'bare-platformatic': 'bp',
  'outboxd-rabbitmq': 'or',
  'bare-amqplib': 'ba',
  'bare-amqplib-batch': 'bb',
  'outboxd-rabbitmq-ch4': 'r4',
  'outboxd-rabbitmq-hash4': 'rh',
  'outboxd-rabbitmq-hash4-ch4': 'rx',
  'outboxd-rabbitmq-quorum': 'rq',
  'outboxd-rabbitmq-baseline': 'rb',
};

/**
 * How a RabbitMQ consumer's broker side is laid out (BrokerAdmin.createLayout), and how many
 * channels outboxd publishes over (sink.rabbitmq.channels); null for the other consumers.
 */
export function rabbitLayout(consumer: ConsumerName): { layout: RabbitLayout; channels: number } | null {
  switch (consumer) {
    case 'outboxd-rabbitmq':
    case 'outboxd-rabbitmq-baseline':
    case 'bare-amqplib':
    case 'bare-amqplib-batch':
      return { layout: 'classic', channels: 1 };
    case 'outboxd-rabbitmq-ch4':
      return { layout: 'classic', channels: 4 };
    case 'outboxd-rabbitmq-hash4':
      return { layout: 'hash4', channels: 1 };
    case 'outboxd-rabbitmq-hash4-ch4':
      return { layout: 'hash4', channels: 4 };
    case 'outboxd-rabbitmq-quorum':
      return { layout: 'quorum', channels: 1 };
    default:
      return null;
  }
}

/** Consumers that pin sink.kafka.workers (outboxd-kafka runs with the default). */
const WORKERS: Partial<Record<ConsumerName, number>> = {
  'outboxd-kafka-main': 0,
  'outboxd-kafka-w1': 1,
  'outboxd-kafka-w1-baseline': 1,
  'outboxd-kafka-w2': 2,
  'outboxd-kafka-w3': 3,
};

function timeoutFor(rows: number): number {
  // Generous: the slowest consumer (RabbitMQ confirms) does ~9k msgs/s on 2 busy cores.
  return 120_000 + (rows / 2_000) * 1000;
}

/** What a consumer must get through: the whole backlog, or a prefix of it (rows, and its end LSN). */
export interface Span {
  rows: number;
  lsn: Lsn;
}

export async function runConsumer(
  ctx: BenchContext,
  b: Backlog,
  consumer: ConsumerName,
  run: number,
  span?: Span,
): Promise<ConsumerResult> {
  const name = `${b.name}_${SHORT[consumer]}${run}_${ctx.tag}`;
  const s = span ?? { rows: b.rows, lsn: b.endLsn };
  try {
    switch (consumer) {
      case 'pg_recvlogical':
        return await runRecvlogical(ctx, b, s, run, name);
      case 'bare-kafkajs':
      case 'bare-platformatic':
      case 'bare-amqplib':
      case 'bare-amqplib-batch':
        return await runBare(ctx, b, s, consumer, run, name);
      default:
        return await runOutboxd(ctx, b, s, consumer, run, name);
    }
  } catch (err) {
    const error = (err as Error).message;
    note(`  ${consumer} FAILED: ${error.split('\n')[0]}`);
    return failed(consumer, b, s, run, error);
  }
}

function failed(consumer: ConsumerName, b: Backlog, span: Span, run: number, error: string): ConsumerResult {
  return {
    consumer,
    backlog: b.name,
    run,
    ok: false,
    error,
    rows: span.rows,
    messages: null,
    seconds: Number.NaN,
    streamSeconds: null,
    rowsPerSec: Number.NaN,
    streamRowsPerSec: null,
    payloadMiBps: Number.NaN,
    walMiBps: null,
    cpu: { consumer: null, walsender: null, broker: null, brokerJit: null, other: null },
    streamCpu: null,
    rssCurve: null,
    hostBusyPct: Number.NaN,
    peakRssMiB: null,
    heap: null,
  };
}

/** Snapshot of the CPU counters a run is measured against. */
export interface Counters {
  at: number;
  host: { busy: number; total: number };
  broker: number;
  /** Of `broker`, the JIT compiler threads' (jitOf). */
  brokerJit: number;
  self: number;
}

export function counters(brokerPids: readonly number[]): Counters {
  const c = process.cpuUsage();
  return {
    at: performance.now(),
    host: hostCpu(),
    broker: cpuOf(brokerPids),
    brokerJit: jitOf(brokerPids),
    self: (c.user + c.system) / 1e6,
  };
}

/** Whether a consumer publishes to Kafka. */
export function onKafka(consumer: ConsumerName): boolean {
  return consumer.includes('kafka') || consumer === 'bare-platformatic';
}

function brokerPidsFor(ctx: BenchContext, consumer: ConsumerName): number[] {
  if (onKafka(consumer)) return ctx.services.kafkaPids;
  if (rabbitLayout(consumer) !== null) return ctx.services.rabbitPids;
  return [];
}

function complete(
  ctx: BenchContext,
  consumer: ConsumerName,
  b: Backlog,
  span: Span,
  run: number,
  m: {
    seconds: number;
    streamSeconds: number | null;
    messages: number | null;
    consumerCpu: number | null;
    /** The consumer's CPU when streaming started. */
    consumerCpuAtActive?: number | null;
    walsenderCpu: number | null;
    peakRssMiB: number | null;
    rssCurve?: ConsumerResult['rssCurve'];
    before: Counters;
    after: Counters;
    wal: boolean;
    heap?: ConsumerResult['heap'];
  },
): ConsumerResult {
  const pids = brokerPidsFor(ctx, consumer);
  const hostTotal = m.after.host.total - m.before.host.total;
  const broker = pids.length > 0 ? m.after.broker - m.before.broker : null;
  const busy = m.after.host.busy - m.before.host.busy;
  const rows = span.rows;
  const r: ConsumerResult = {
    consumer,
    backlog: b.name,
    run,
    ok: true,
    rows,
    messages: m.messages,
    seconds: m.seconds,
    streamSeconds: m.streamSeconds,
    rowsPerSec: rows / m.seconds,
    streamRowsPerSec: m.streamSeconds ? rows / m.streamSeconds : null,
    payloadMiBps: (b.avgPayloadBytes * rows) / 2 ** 20 / m.seconds,
    walMiBps: m.wal ? Number(span.lsn - b.startLsn) / 2 ** 20 / m.seconds : null,
    cpu: {
      consumer: m.consumerCpu,
      walsender: m.walsenderCpu,
      broker,
      brokerJit: pids.length > 0 ? m.after.brokerJit - m.before.brokerJit : null,
      other: Math.max(0, busy - (m.consumerCpu ?? 0) - (m.walsenderCpu ?? 0) - (broker ?? 0)),
    },
    streamCpu: m.consumerCpu !== null && m.consumerCpuAtActive != null ? m.consumerCpu - m.consumerCpuAtActive : null,
    hostBusyPct: hostTotal > 0 ? (100 * busy) / hostTotal : Number.NaN,
    peakRssMiB: m.peakRssMiB,
    rssCurve: m.rssCurve ?? null,
    heap: m.heap ?? null,
  };
  // A prefix run may publish a little past the prefix before it is stopped.
  const short = m.messages !== null && (rows === b.rows ? m.messages !== rows : m.messages < rows);
  if (short) {
    r.ok = false;
    r.error = `expected ${rows} messages, counted ${m.messages}`;
  }
  note(
    `  ${consumer.padEnd(16)} ${r.ok ? '' : 'FAILED '}${fmt(r.rowsPerSec)} rows/s in ${r.seconds.toFixed(2)} s` +
      `${r.streamRowsPerSec ? ` (streaming ${fmt(r.streamRowsPerSec)}/s)` : ''}, cpu ${num(r.cpu.consumer)} s` +
      `${r.cpu.walsender !== null ? `, walsender ${num(r.cpu.walsender)} s` : ''}${r.cpu.broker !== null ? `, broker ${num(r.cpu.broker)} s${r.cpu.brokerJit ? ` (JIT ${num(r.cpu.brokerJit)} s)` : ''}` : ''}` +
      `${r.peakRssMiB !== null ? `, peak RSS ${r.peakRssMiB.toFixed(0)} MiB` : ''}${r.heap ? ` (heap ${r.heap.usedMiB.toFixed(0)}/${r.heap.totalMiB.toFixed(0)} MiB)` : ''}` +
      `, host ${r.hostBusyPct.toFixed(0)}% busy, other ${num(r.cpu.other)} s${rows < b.rows ? ` [first ${rows} rows]` : ''}${r.error ? `: ${r.error}` : ''}`,
  );
  return r;
}

const round1 = (n: number): number => Math.round(n * 10) / 10;
const fmt = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const num = (n: number | null): string => (n === null ? 'n/a' : n.toFixed(2));

export interface Watch {
  doneAt: number;
  activeAt: number | null;
  consumerCpuAtActive: number | null;
  walsenderPid: number | null;
  walsenderCpu: number | null;
  consumerCpu: number | null;
  consumerPeakMiB: number | null;
  rssCurve: Array<{ rows: number; rssMiB: number; peakMiB: number }>;
}

/**
 * Polls the copy slot every 25 ms until it is drained: confirmed_flush_lsn ≥ the backlog's end
 * LSN (outboxd), or the process exited 0 (pg_recvlogical with --endpos). Samples the walsender's
 * CPU on each poll, since it may exit together with its client.
 */
export async function watchDrain(
  db: pg.Client,
  slot: string,
  span: Span,
  child: Child,
  doneOnExit: boolean,
  checkpoints: Backlog['checkpoints'] = [],
): Promise<Watch> {
  const deadline = performance.now() + timeoutFor(span.rows);
  let nextCheckpoint = 0;
  const w: Watch = {
    doneAt: 0,
    activeAt: null,
    consumerCpuAtActive: null,
    walsenderPid: null,
    walsenderCpu: null,
    consumerCpu: null,
    consumerPeakMiB: null,
    rssCurve: [],
  };
  for (;;) {
    const s = await slotState(db, slot);
    const now = performance.now();
    if (!s) throw new Error(`slot ${slot} vanished`);
    if (s.activePid !== null) {
      if (w.activeAt === null) {
        w.activeAt = now;
        w.consumerCpuAtActive = child.exitedAt === null ? cpuSeconds(child.pid) : null;
      }
      w.walsenderPid = s.activePid;
      w.walsenderCpu = cpuSeconds(s.activePid) ?? w.walsenderCpu;
    }
    if (child.exitedAt === null) {
      w.consumerCpu = cpuSeconds(child.pid) ?? w.consumerCpu;
      const mem = memory(child.pid);
      w.consumerPeakMiB = mem?.peakMiB ?? w.consumerPeakMiB;
      let passed = 0;
      while (s.confirmed !== null && nextCheckpoint < checkpoints.length && s.confirmed >= (checkpoints[nextCheckpoint]?.lsn ?? 0n)) {
        passed = checkpoints[nextCheckpoint]?.rows ?? 0;
        nextCheckpoint++;
      }
      if (passed > 0 && mem) w.rssCurve.push({ rows: passed, rssMiB: round1(mem.rssMiB), peakMiB: round1(mem.peakMiB) });
    }
    if (!doneOnExit && s.confirmed !== null && s.confirmed >= span.lsn) {
      w.doneAt = now;
      return w;
    }
    if (child.exitedAt !== null) {
      if (doneOnExit && child.exitCode === 0) {
        w.doneAt = child.exitedAt;
        return w;
      }
      throw new Error(
        `exited (${child.exitCode ?? child.signal}) before draining; confirmed ${s.confirmed === null ? 'none' : formatLsn(s.confirmed)} of ${formatLsn(span.lsn)}\n${child.stderrTail().slice(-3000)}`,
      );
    }
    if (now > deadline) {
      throw new Error(
        `not drained after ${Math.round(timeoutFor(span.rows) / 1000)} s: confirmed ${s.confirmed === null ? 'none' : formatLsn(s.confirmed)} of ${formatLsn(span.lsn)}\n${child.stderrTail().slice(-3000)}`,
      );
    }
    await sleep(25);
  }
}

// --- pg_recvlogical ----------------------------------------------------------------------------

async function runRecvlogical(ctx: BenchContext, b: Backlog, span: Span, run: number, name: string): Promise<ConsumerResult> {
  const slot = `c_${name}`;
  await copySlot(ctx.db, b.template, slot);
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-bench-'));
  const timeFile = join(dir, 'time');
  try {
    const before = counters([]);
    // GNU time reports pg_recvlogical's own CPU and peak RSS once it exits.
    const child = startChild('/usr/bin/time', [
      '-f',
      '%U %S %M',
      '-o',
      timeFile,
      ctx.recvlogical,
      '-d',
      ctx.services.dbUrl,
      `--slot=${slot}`,
      '--start',
      `--endpos=${formatLsn(span.lsn)}`,
      '--no-loop',
      '-F',
      '0',
      '-f',
      '/dev/null',
      '-o',
      'proto_version=1',
      '-o',
      `publication_names=${b.publication}`,
      '-o',
      'messages=true',
    ]);
    const w = await watchDrain(ctx.db, slot, span, child, true);
    const after = counters([]);
    const [user, sys, maxKb] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()?.split(' ').map(Number) ?? [];
    return complete(ctx, 'pg_recvlogical', b, span, run, {
      seconds: (w.doneAt - child.spawnedAt) / 1000,
      streamSeconds: w.activeAt ? (w.doneAt - w.activeAt) / 1000 : null,
      messages: null,
      consumerCpu: user !== undefined && sys !== undefined ? user + sys : null,
      walsenderCpu: w.walsenderCpu,
      peakRssMiB: maxKb ? maxKb / 1024 : null,
      before,
      after,
      wal: true,
    });
  } finally {
    await dropSlot(ctx.db, slot);
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- outboxd -----------------------------------------------------------------------------------

/** The destination a consumer publishes to, and how to count and remove what arrived there. */
interface Target {
  yaml: string;
  count(): Promise<number | null>;
  cleanup(): Promise<void>;
}

async function prepareTarget(ctx: BenchContext, consumer: ConsumerName, name: string): Promise<Target & { topic: string; queue: string }> {
  const topic = `bench.${name}.order`;
  const queue = `bench.${name}`;
  if (consumer === 'outboxd-kafka-eos' || consumer === 'outboxd-kafka-eos-baseline') {
    const checkpoints = `bench.${name}.checkpoints`;
    await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
    await ctx.brokers.createCheckpointTopic(checkpoints);
    return {
      topic,
      queue,
      yaml: `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n${compressionYaml(ctx)}    delivery: exactly-once\n    checkpointTopic: ${checkpoints}\n`,
      // The partitions' offsets count the transaction markers too: count what outboxd confirmed.
      count: async () => null,
      cleanup: async () => {
        await ctx.brokers.deleteTopic(topic);
        await ctx.brokers.deleteTopic(checkpoints);
      },
    };
  }
  if (onKafka(consumer)) {
    await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
    const workers = WORKERS[consumer];
    return {
      topic,
      queue,
      yaml: `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n${consumer === 'outboxd-kafka-lz4' ? '    compression: lz4\n' : compressionYaml(ctx)}${workers === undefined ? '' : `    workers: ${workers}\n`}`,
      count: () => ctx.brokers.topicCount(topic),
      cleanup: () => ctx.brokers.deleteTopic(topic),
    };
  }
  const rabbit = rabbitLayout(consumer);
  if (rabbit !== null) {
    await ctx.brokers.createLayout(queue, rabbit.layout);
    const hash = rabbit.layout === 'hash4' ? '    exchangeType: x-consistent-hash\n' : '';
    const channels = rabbit.channels === 1 ? '' : `    channels: ${rabbit.channels}\n`;
    return {
      topic,
      queue,
      yaml: `sink:\n  type: rabbitmq\n  rabbitmq:\n    url: ${ctx.services.amqpUrl}\n    exchange: ${queue}\n${hash}${channels}    declare: true\n`,
      count: () => ctx.brokers.layoutCount(queue, rabbit.layout),
      cleanup: () => ctx.brokers.deleteLayout(queue, rabbit.layout),
    };
  }
  return {
    topic,
    queue,
    yaml: 'sink:\n  type: stdout\n  stdout:\n    destination: bench.{aggregatetype}\n',
    count: async () => null,
    cleanup: async () => undefined,
  };
}

export function relayYaml(o: {
  dbUrl: string;
  slot: string;
  publication: string;
  table: string;
  port: number;
  sinkYaml: string;
  pipelineYaml: string;
  /** postgres.shard: `slot` and `publication` are then the base names (`<name>_<index>_of_<count>`). */
  shard?: { index: number; count: number };
}): string {
  return [
    'postgres:',
    `  url: ${o.dbUrl}`,
    `  slot: ${o.slot}`,
    `  publication: ${o.publication}`,
    '  createSlot: false',
    '  createPublication: false',
    ...(o.shard ? ['  shard:', `    index: ${o.shard.index}`, `    count: ${o.shard.count}`] : []),
    'outbox:',
    '  tables:',
    `    - name: public.${o.table}`,
    o.sinkYaml.trimEnd(),
    ...(o.pipelineYaml ? ['pipeline:', o.pipelineYaml.trimEnd()] : []),
    'http:',
    '  host: 127.0.0.1',
    `  port: ${o.port}`,
    'log:',
    '  level: info',
    '',
  ].join('\n');
}

/** The sum of a metric's samples in Prometheus text, or of those with every label in `labels`. */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/.exec(line);
    if (m && m[1] === name && wanted.every((w) => (m[2] ?? '').includes(w))) sum += Number(m[3]);
  }
  return sum;
}

export async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return res.text();
}

/** Node flags for an outboxd child (a baseline's: outboxd's own runtime), --cpu-prof when profiling that consumer. */
export function nodeArgs(ctx: BenchContext, consumer: ConsumerName | null, name: string, baseline = false): string[] {
  const flags = ctx.outboxdNodeFlags ?? (baseline ? RUNTIME_FLAGS : []);
  if (!ctx.profileDir || consumer === null || !ctx.profileConsumers.has(consumer)) return [...flags];
  return [...flags, '--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`, `--cpu-prof-name=${name}.cpuprofile`];
}

async function runOutboxd(
  ctx: BenchContext,
  b: Backlog,
  span: Span,
  consumer: ConsumerName,
  run: number,
  name: string,
): Promise<ConsumerResult> {
  const slot = `c_${name}`;
  await copySlot(ctx.db, b.template, slot);
  const target = await prepareTarget(ctx, consumer, name);
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-bench-'));
  let child: Child | null = null;
  try {
    const port = await getFreePort();
    const cfg = join(dir, 'outboxd.yaml');
    writeFileSync(
      cfg,
      relayYaml({
        dbUrl: ctx.services.dbUrl,
        slot,
        publication: b.publication,
        table: b.table,
        port,
        sinkYaml: target.yaml,
        pipelineYaml: ctx.pipelineYaml,
      }),
    );
    const baseline = consumer.endsWith('-baseline');
    const main = baseline ? ctx.baselineMain : MAIN;
    if (main === null) throw new Error(`${consumer} needs BENCH_BASELINE_REF (a commit to build and compare with)`);
    const entry = consumer === 'outboxd-discard' ? [benchFile('children/discard-relay.js'), cfg] : [main, 'run', '-c', cfg];
    const pids = brokerPidsFor(ctx, consumer);
    const before = counters(pids);
    child = startChild(process.execPath, [...nodeArgs(ctx, consumer, name, baseline), ...entry], outboxdEnv(ctx, baseline));
    const w = await watchDrain(
      ctx.db,
      slot,
      span,
      child,
      false,
      b.checkpoints.filter((c) => c.rows <= span.rows),
    );
    // Read everything while the process still lives: CPU, peak RSS, then its own counters.
    const consumerCpu = cpuSeconds(child.pid) ?? w.consumerCpu;
    const peak = memory(child.pid)?.peakMiB ?? w.consumerPeakMiB;
    const written = bytesWritten(child.pid);
    const walsenderCpu = (w.walsenderPid !== null ? cpuSeconds(w.walsenderPid) : null) ?? w.walsenderCpu;
    const after = counters(pids);
    const metrics = await scrape(port);
    const published = metricSum(metrics, 'outboxd_messages_published_total');
    const mib = (n: string): number => metricSum(metrics, n) / 2 ** 20;
    const heap = {
      usedMiB: mib('outboxd_nodejs_heap_size_used_bytes'),
      totalMiB: mib('outboxd_nodejs_heap_size_total_bytes'),
      externalMiB: mib('outboxd_nodejs_external_memory_bytes'),
    };
    await stopChild(child);
    if (child.exitCode !== 0)
      throw new Error(`outboxd exited ${child.exitCode ?? child.signal} on SIGTERM\n${child.stderrTail().slice(-2000)}`);
    const onBroker = await target.count();
    const stored = onKafka(consumer) ? topicBytes(ctx, target.topic) : null;
    const r = complete(ctx, consumer, b, span, run, {
      seconds: (w.doneAt - child.spawnedAt) / 1000,
      streamSeconds: w.activeAt ? (w.doneAt - w.activeAt) / 1000 : null,
      messages: onBroker ?? published,
      consumerCpu,
      consumerCpuAtActive: w.consumerCpuAtActive,
      walsenderCpu,
      peakRssMiB: peak,
      rssCurve: w.rssCurve,
      before,
      after,
      wal: true,
      heap,
    });
    r.brokerBytes = stored;
    if (written !== null) note(`  ${consumer.padEnd(16)} wrote ${(written / 2 ** 20).toFixed(1)} MiB (its write calls, sockets and logs)`);
    if (consumer.includes('-eos')) {
      r.transactions = metricSum(metrics, 'outboxd_kafka_transactions_total', { result: 'committed' });
      note(
        `  ${consumer.padEnd(16)} ${r.transactions} transactions committed, ${fmt(span.rows / Math.max(1, r.transactions))} events each`,
      );
    }
    if (stored !== null)
      note(`  ${consumer.padEnd(16)} broker holds ${(stored / 2 ** 20).toFixed(1)} MiB (compression ${ctx.compression})`);
    if (r.ok && (span.rows === b.rows ? published !== span.rows : published < span.rows)) {
      r.ok = false;
      r.error = `outboxd_messages_published_total is ${published}, expected ${span.rows}`;
    }
    return r;
  } finally {
    if (child) await stopChild(child, 5_000);
    await dropSlot(ctx.db, slot);
    await target.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The sink.kafka.compression line ('' for none: a baseline build before codecs reads no other value). */
function compressionYaml(ctx: BenchContext): string {
  return ctx.compression === 'none' ? '' : `    compression: ${ctx.compression}\n`;
}

/** Bytes of the topic's log segments on the harness broker (every partition), or null. */
function topicBytes(ctx: BenchContext, topic: string): number | null {
  const data = ctx.services.kafkaDataDir;
  if (data === null) return null;
  let n = 0;
  for (const dir of readdirSync(data)) {
    if (!dir.startsWith(`${topic}-`) || !/^\d+$/.test(dir.slice(topic.length + 1))) continue;
    for (const f of readdirSync(join(data, dir))) if (f.endsWith('.log')) n += statSync(join(data, dir, f)).size;
  }
  return n;
}

// --- bare clients --------------------------------------------------------------------------------

export interface BareParams {
  kind: 'kafkajs' | 'platformatic' | 'amqplib';
  dbUrl: string;
  table: string;
  rows: number;
  batch: number;
  brokers: string[];
  topic: string;
  amqpUrl: string;
  exchange: string;
  /** amqplib: 'sliding' keeps `batch` unconfirmed at all times; 'batch' waits for each batch's confirms (as a relay must). */
  window: 'sliding' | 'batch';
}

export type BareMessage =
  | { type: 'loaded'; rows: number }
  | { type: 'start' }
  | { type: 'done'; seconds: number; cpuSeconds: number; published: number; peakMiB: number }
  | { type: 'error'; message: string };

async function runBare(
  ctx: BenchContext,
  b: Backlog,
  span: Span,
  consumer: ConsumerName,
  run: number,
  name: string,
): Promise<ConsumerResult> {
  const target = await prepareTarget(ctx, consumer, name);
  const params: BareParams = {
    kind: consumer === 'bare-kafkajs' ? 'kafkajs' : consumer === 'bare-platformatic' ? 'platformatic' : 'amqplib',
    dbUrl: ctx.services.dbUrl,
    table: b.table,
    rows: span.rows,
    batch: ctx.bareBatch,
    brokers: ctx.services.kafka ?? [],
    topic: target.topic,
    amqpUrl: ctx.services.amqpUrl ?? '',
    exchange: target.queue,
    window: consumer === 'bare-amqplib-batch' ? 'batch' : 'sliding',
  };
  const pids = brokerPidsFor(ctx, consumer);
  let child: ChildProcess | null = null;
  try {
    const proc = fork(benchFile('children/bare.js'), [JSON.stringify(params)], {
      execArgv: ['--max-old-space-size=6144'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    child = proc;
    let tail = '';
    proc.stderr?.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-5000);
    });
    let before: Counters | null = null;
    const done = await new Promise<Extract<BareMessage, { type: 'done' }>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bare client timed out\n${tail}`)), timeoutFor(span.rows) + 120_000);
      proc.on('message', (msg: BareMessage) => {
        if (msg.type === 'start') before = counters(pids);
        else if (msg.type === 'done') {
          clearTimeout(timer);
          resolve(msg);
        } else if (msg.type === 'error') {
          clearTimeout(timer);
          reject(new Error(msg.message));
        }
      });
      proc.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`bare client exited ${code}\n${tail}`));
      });
    });
    const after = counters(pids);
    const onBroker = await target.count();
    return complete(ctx, consumer, b, span, run, {
      seconds: done.seconds,
      // Timed from its first publish, after its start-up, connections and reading its rows: all
      // of its time is streaming, comparable with outboxd's time from its slot turning active.
      streamSeconds: done.seconds,
      messages: onBroker ?? done.published,
      consumerCpu: done.cpuSeconds,
      walsenderCpu: null,
      peakRssMiB: null,
      before: before ?? after,
      after,
      wal: false,
    });
  } finally {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await target.cleanup();
  }
}
