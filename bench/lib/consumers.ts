import { fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type pg from 'pg';
import { getFreePort } from '../../test/harness/ports.js';
import type { Backlog } from './backlog.js';
import type { BrokerAdmin } from './brokers.js';
import { type Child, startChild, stopChild } from './child.js';
import { note, sleep } from './log.js';
import { MAIN, benchFile } from './paths.js';
import { copySlot, dropSlot, formatLsn, slotState } from './pg.js';
import { cpuOf, cpuSeconds, hostCpu, memory } from './procfs.js';
import type { Services } from './services.js';

export const CONSUMERS = [
  'pg_recvlogical',
  'outboxd-discard',
  'outboxd-stdout',
  'outboxd-kafka',
  'bare-kafkajs',
  'outboxd-rabbitmq',
  'bare-amqplib',
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
  cpu: { consumer: number | null; walsender: number | null; broker: number | null };
  /** Busy share of all host CPUs over the run, 0..100. */
  hostBusyPct: number;
  peakRssMiB: number | null;
}

const SHORT: Record<ConsumerName, string> = {
  pg_recvlogical: 'rl',
  'outboxd-discard': 'od',
  'outboxd-stdout': 'os',
  'outboxd-kafka': 'ok',
  'bare-kafkajs': 'bk',
  'outboxd-rabbitmq': 'or',
  'bare-amqplib': 'ba',
};

function timeoutFor(b: Backlog): number {
  // Generous: the slowest consumer (RabbitMQ confirms) does ~5k msgs/s on 2 busy cores.
  return 120_000 + (b.rows / 2_000) * 1000;
}

export async function runConsumer(ctx: BenchContext, b: Backlog, consumer: ConsumerName, run: number): Promise<ConsumerResult> {
  const name = `${b.name}_${SHORT[consumer]}${run}_${ctx.tag}`;
  try {
    switch (consumer) {
      case 'pg_recvlogical':
        return await runRecvlogical(ctx, b, run, name);
      case 'bare-kafkajs':
      case 'bare-amqplib':
        return await runBare(ctx, b, consumer, run, name);
      default:
        return await runOutboxd(ctx, b, consumer, run, name);
    }
  } catch (err) {
    const error = (err as Error).message;
    note(`  ${consumer} FAILED: ${error.split('\n')[0]}`);
    return failed(consumer, b, run, error);
  }
}

function failed(consumer: ConsumerName, b: Backlog, run: number, error: string): ConsumerResult {
  return {
    consumer,
    backlog: b.name,
    run,
    ok: false,
    error,
    rows: b.rows,
    messages: null,
    seconds: Number.NaN,
    streamSeconds: null,
    rowsPerSec: Number.NaN,
    streamRowsPerSec: null,
    payloadMiBps: Number.NaN,
    walMiBps: null,
    cpu: { consumer: null, walsender: null, broker: null },
    hostBusyPct: Number.NaN,
    peakRssMiB: null,
  };
}

/** Snapshot of the CPU counters a run is measured against. */
interface Counters {
  at: number;
  host: { busy: number; total: number };
  broker: number;
}

function counters(brokerPids: readonly number[]): Counters {
  return { at: performance.now(), host: hostCpu(), broker: cpuOf(brokerPids) };
}

function brokerPidsFor(ctx: BenchContext, consumer: ConsumerName): number[] {
  if (consumer === 'outboxd-kafka' || consumer === 'bare-kafkajs') return ctx.services.kafkaPids;
  if (consumer === 'outboxd-rabbitmq' || consumer === 'bare-amqplib') return ctx.services.rabbitPids;
  return [];
}

function complete(
  ctx: BenchContext,
  consumer: ConsumerName,
  b: Backlog,
  run: number,
  m: {
    seconds: number;
    streamSeconds: number | null;
    messages: number | null;
    consumerCpu: number | null;
    walsenderCpu: number | null;
    peakRssMiB: number | null;
    before: Counters;
    after: Counters;
    wal: boolean;
  },
): ConsumerResult {
  const pids = brokerPidsFor(ctx, consumer);
  const hostTotal = m.after.host.total - m.before.host.total;
  const r: ConsumerResult = {
    consumer,
    backlog: b.name,
    run,
    ok: true,
    rows: b.rows,
    messages: m.messages,
    seconds: m.seconds,
    streamSeconds: m.streamSeconds,
    rowsPerSec: b.rows / m.seconds,
    streamRowsPerSec: m.streamSeconds ? b.rows / m.streamSeconds : null,
    payloadMiBps: b.payloadTotalBytes / 2 ** 20 / m.seconds,
    walMiBps: m.wal ? b.walBytes / 2 ** 20 / m.seconds : null,
    cpu: {
      consumer: m.consumerCpu,
      walsender: m.walsenderCpu,
      broker: pids.length > 0 ? m.after.broker - m.before.broker : null,
    },
    hostBusyPct: hostTotal > 0 ? (100 * (m.after.host.busy - m.before.host.busy)) / hostTotal : Number.NaN,
    peakRssMiB: m.peakRssMiB,
  };
  if (m.messages !== null && m.messages !== b.rows) {
    r.ok = false;
    r.error = `expected ${b.rows} messages, counted ${m.messages}`;
  }
  note(
    `  ${consumer.padEnd(16)} ${r.ok ? '' : 'FAILED '}${fmt(r.rowsPerSec)} rows/s in ${r.seconds.toFixed(2)} s` +
      `${r.streamRowsPerSec ? ` (streaming ${fmt(r.streamRowsPerSec)}/s)` : ''}, cpu ${num(r.cpu.consumer)} s` +
      `${r.cpu.walsender !== null ? `, walsender ${num(r.cpu.walsender)} s` : ''}${r.cpu.broker !== null ? `, broker ${num(r.cpu.broker)} s` : ''}` +
      `${r.peakRssMiB !== null ? `, peak RSS ${r.peakRssMiB.toFixed(0)} MiB` : ''}, host ${r.hostBusyPct.toFixed(0)}% busy${r.error ? `: ${r.error}` : ''}`,
  );
  return r;
}

const fmt = (n: number): string => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : 'n/a');
const num = (n: number | null): string => (n === null ? 'n/a' : n.toFixed(2));

interface Watch {
  doneAt: number;
  activeAt: number | null;
  walsenderPid: number | null;
  walsenderCpu: number | null;
  consumerCpu: number | null;
  consumerPeakMiB: number | null;
}

/**
 * Polls the copy slot every 25 ms until it is drained: confirmed_flush_lsn ≥ the backlog's end
 * LSN (outboxd), or the process exited 0 (pg_recvlogical with --endpos). Samples the walsender's
 * CPU on each poll, since it may exit together with its client.
 */
async function watchDrain(db: pg.Client, slot: string, b: Backlog, child: Child, doneOnExit: boolean): Promise<Watch> {
  const deadline = performance.now() + timeoutFor(b);
  const w: Watch = { doneAt: 0, activeAt: null, walsenderPid: null, walsenderCpu: null, consumerCpu: null, consumerPeakMiB: null };
  for (;;) {
    const s = await slotState(db, slot);
    const now = performance.now();
    if (!s) throw new Error(`slot ${slot} vanished`);
    if (s.activePid !== null) {
      w.activeAt ??= now;
      w.walsenderPid = s.activePid;
      w.walsenderCpu = cpuSeconds(s.activePid) ?? w.walsenderCpu;
    }
    if (child.exitedAt === null) {
      w.consumerCpu = cpuSeconds(child.pid) ?? w.consumerCpu;
      w.consumerPeakMiB = memory(child.pid)?.peakMiB ?? w.consumerPeakMiB;
    }
    if (!doneOnExit && s.confirmed !== null && s.confirmed >= b.endLsn) {
      w.doneAt = now;
      return w;
    }
    if (child.exitedAt !== null) {
      if (doneOnExit && child.exitCode === 0) {
        w.doneAt = child.exitedAt;
        return w;
      }
      throw new Error(
        `exited (${child.exitCode ?? child.signal}) before draining; confirmed ${s.confirmed === null ? 'none' : formatLsn(s.confirmed)} of ${formatLsn(b.endLsn)}\n${child.stderrTail().slice(-3000)}`,
      );
    }
    if (now > deadline) {
      throw new Error(
        `not drained after ${Math.round(timeoutFor(b) / 1000)} s: confirmed ${s.confirmed === null ? 'none' : formatLsn(s.confirmed)} of ${formatLsn(b.endLsn)}\n${child.stderrTail().slice(-3000)}`,
      );
    }
    await sleep(25);
  }
}

// --- pg_recvlogical ----------------------------------------------------------------------------

async function runRecvlogical(ctx: BenchContext, b: Backlog, run: number, name: string): Promise<ConsumerResult> {
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
      `--endpos=${formatLsn(b.endLsn)}`,
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
    const w = await watchDrain(ctx.db, slot, b, child, true);
    const after = counters([]);
    const [user, sys, maxKb] = readFileSync(timeFile, 'utf8').trim().split('\n').pop()?.split(' ').map(Number) ?? [];
    return complete(ctx, 'pg_recvlogical', b, run, {
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
  if (consumer === 'outboxd-kafka' || consumer === 'bare-kafkajs') {
    await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
    return {
      topic,
      queue,
      yaml: `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n`,
      count: () => ctx.brokers.topicCount(topic),
      cleanup: () => ctx.brokers.deleteTopic(topic),
    };
  }
  if (consumer === 'outboxd-rabbitmq' || consumer === 'bare-amqplib') {
    await ctx.brokers.createQueue(queue);
    return {
      topic,
      queue,
      yaml: `sink:\n  type: rabbitmq\n  rabbitmq:\n    url: ${ctx.services.amqpUrl}\n    exchange: ${queue}\n    declare: true\n`,
      count: () => ctx.brokers.queueCount(queue),
      cleanup: () => ctx.brokers.deleteQueue(queue),
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

export function relayYaml(o: { dbUrl: string; slot: string; publication: string; table: string; port: number; sinkYaml: string; pipelineYaml: string }): string {
  return [
    'postgres:',
    `  url: ${o.dbUrl}`,
    `  slot: ${o.slot}`,
    `  publication: ${o.publication}`,
    '  createSlot: false',
    '  createPublication: false',
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

/** Sum of a counter's samples in Prometheus text. */
export function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

export async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  return res.text();
}

/** Node flags for an outboxd child: --cpu-prof when profiling that consumer. */
export function nodeArgs(ctx: BenchContext, consumer: ConsumerName, name: string): string[] {
  if (!ctx.profileDir || !ctx.profileConsumers.has(consumer)) return [];
  return ['--cpu-prof', `--cpu-prof-dir=${ctx.profileDir}`, `--cpu-prof-name=${name}.cpuprofile`];
}

async function runOutboxd(ctx: BenchContext, b: Backlog, consumer: ConsumerName, run: number, name: string): Promise<ConsumerResult> {
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
    const entry = consumer === 'outboxd-discard' ? [benchFile('children/discard-relay.js'), cfg] : [MAIN, 'run', '-c', cfg];
    const pids = brokerPidsFor(ctx, consumer);
    const before = counters(pids);
    child = startChild(process.execPath, [...nodeArgs(ctx, consumer, name), ...entry]);
    const w = await watchDrain(ctx.db, slot, b, child, false);
    // Read everything while the process still lives: CPU, peak RSS, then its own counters.
    const consumerCpu = cpuSeconds(child.pid) ?? w.consumerCpu;
    const peak = memory(child.pid)?.peakMiB ?? w.consumerPeakMiB;
    const walsenderCpu = (w.walsenderPid !== null ? cpuSeconds(w.walsenderPid) : null) ?? w.walsenderCpu;
    const after = counters(pids);
    const published = metricSum(await scrape(port), 'outboxd_messages_published_total');
    await stopChild(child);
    if (child.exitCode !== 0) throw new Error(`outboxd exited ${child.exitCode ?? child.signal} on SIGTERM\n${child.stderrTail().slice(-2000)}`);
    const onBroker = await target.count();
    const r = complete(ctx, consumer, b, run, {
      seconds: (w.doneAt - child.spawnedAt) / 1000,
      streamSeconds: w.activeAt ? (w.doneAt - w.activeAt) / 1000 : null,
      messages: onBroker ?? published,
      consumerCpu,
      walsenderCpu,
      peakRssMiB: peak,
      before,
      after,
      wal: true,
    });
    if (r.ok && published !== b.rows) {
      r.ok = false;
      r.error = `outboxd_messages_published_total is ${published}, expected ${b.rows}`;
    }
    return r;
  } finally {
    if (child) await stopChild(child, 5_000);
    await dropSlot(ctx.db, slot);
    await target.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
}

// --- bare clients --------------------------------------------------------------------------------

export interface BareParams {
  kind: 'kafkajs' | 'amqplib';
  dbUrl: string;
  table: string;
  rows: number;
  batch: number;
  brokers: string[];
  topic: string;
  amqpUrl: string;
  exchange: string;
}

export type BareMessage =
  | { type: 'loaded'; rows: number }
  | { type: 'start' }
  | { type: 'done'; seconds: number; cpuSeconds: number; published: number; peakMiB: number }
  | { type: 'error'; message: string };

async function runBare(ctx: BenchContext, b: Backlog, consumer: ConsumerName, run: number, name: string): Promise<ConsumerResult> {
  const target = await prepareTarget(ctx, consumer, name);
  const params: BareParams = {
    kind: consumer === 'bare-kafkajs' ? 'kafkajs' : 'amqplib',
    dbUrl: ctx.services.dbUrl,
    table: b.table,
    rows: b.rows,
    batch: ctx.bareBatch,
    brokers: ctx.services.kafka ?? [],
    topic: target.topic,
    amqpUrl: ctx.services.amqpUrl ?? '',
    exchange: target.queue,
  };
  const pids = brokerPidsFor(ctx, consumer);
  try {
    const child = fork(benchFile('children/bare.js'), [JSON.stringify(params)], {
      execArgv: ['--max-old-space-size=6144'],
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let tail = '';
    child.stderr?.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-5000);
    });
    let before: Counters | null = null;
    const done = await new Promise<Extract<BareMessage, { type: 'done' }>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`bare client timed out\n${tail}`)), timeoutFor(b) + 120_000);
      child.on('message', (msg: BareMessage) => {
        if (msg.type === 'start') before = counters(pids);
        else if (msg.type === 'done') {
          clearTimeout(timer);
          resolve(msg);
        } else if (msg.type === 'error') {
          clearTimeout(timer);
          reject(new Error(msg.message));
        }
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`bare client exited ${code}\n${tail}`));
      });
    });
    const after = counters(pids);
    child.kill('SIGKILL');
    const onBroker = await target.count();
    return complete(ctx, consumer, b, run, {
      seconds: done.seconds,
      streamSeconds: null,
      messages: onBroker ?? done.published,
      consumerCpu: done.cpuSeconds,
      walsenderCpu: null,
      peakRssMiB: null,
      before: before ?? after,
      after,
      wal: false,
    });
  } finally {
    await target.cleanup();
  }
}
