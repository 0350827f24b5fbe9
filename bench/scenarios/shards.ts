import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type pg from 'pg';
import { getFreePort } from '../../test/harness/ports.js';
import { type Backlog, type BacklogSpec, createBacklog, dropBacklog } from '../lib/backlog.js';
import { type Child, startChild, stopChild } from '../lib/child.js';
import { type DecodeProbe, createProbePublications, dropProbePublications, probeDecode } from '../lib/decode-probe.js';
import {
  type BenchContext,
  type Watch,
  counters,
  metricSum,
  nodeArgs,
  outboxdEnv,
  relayYaml,
  scrape,
  watchDrain,
} from '../lib/consumers.js';
import { note } from '../lib/log.js';
import { MAIN } from '../lib/paths.js';
import { connect, copySlot, dropSlot } from '../lib/pg.js';
import { cpuSeconds, memory } from '../lib/procfs.js';
import { max, median, min } from '../lib/stats.js';
import { type BacklogInfo, type Spread, backlogInfo, table } from '../lib/summary.js';

/**
 * Shards (issue 25, ADR 0020): one backlog drained into Kafka by N relays at once, for each N in
 * `counts`. `outboxd setup` (the real CLI) creates every shard's publication and template slot
 * for every N before a row is written, so each slot sees the whole backlog; each run drains fresh
 * copies of N templates (pg_copy_logical_replication_slot), as the drain scenario does.
 *
 * The N relays (`node dist/main.js run`, shard `i` of `N`, every one into the same topic) are
 * spawned together. The run is timed from the first spawn until the last shard's slot has
 * confirmed the backlog's end. Measured over that span, from /proc: each relay's CPU, each
 * walsender's (pg_replication_slots.active_pid: every walsender decodes the whole WAL and
 * evaluates its row filter on every row, and sends about 1/N of them), the broker's, and what
 * the rest of the host used. Checked: the topic holds exactly the backlog, and the shards'
 * `outboxd_messages_published_total` add up to it.
 *
 * Each run first probes what decoding alone costs (bench/lib/decode-probe.ts): the part of a
 * walsender's CPU that every further slot adds, whatever its share of the rows.
 */
export interface ShardResult {
  index: number;
  published: number;
  /** From the first spawn until this shard's slot confirmed the backlog's end. */
  seconds: number;
  relayCpu: number | null;
  /** The relay's CPU from the moment its slot became active (start-up excluded). */
  relayStreamCpu: number | null;
  walsenderCpu: number | null;
  peakRssMiB: number | null;
}

export interface ShardsRun {
  shards: number;
  run: number;
  ok: boolean;
  error?: string;
  rows: number;
  /** In the topic afterwards. */
  messages: number | null;
  perShard: ShardResult[];
  /** First spawn until the last shard drained. */
  seconds: number;
  /** First slot active until the last shard drained. */
  streamSeconds: number | null;
  msgsPerSec: number;
  /** Sums over the shards. */
  relayCpu: number | null;
  relayStreamCpu: number | null;
  walsenderCpu: number | null;
  brokerCpu: number | null;
  /** Host CPU no relay, walsender or broker accounts for (Postgres' other processes, the kernel, the bench). */
  otherCpu: number;
  hostBusyPct: number;
}

export interface ShardsSummary {
  shards: number;
  runs: number;
  ok: number;
  rows: number;
  msgsPerSec: Spread;
  streamMsgsPerSec: number;
  seconds: number;
  /** Medians over the runs of the sums over the shards. */
  relayCpu: number;
  relayUsPerMsg: number;
  relayStreamUsPerMsg: number;
  /** One walsender's CPU (mean over the shards), and per WAL event: every walsender reads every row. */
  walsenderCpuPerShard: number;
  walsenderUsPerEventPerShard: number;
  /** Every walsender together, per event: what the primary pays for decoding. */
  walsenderCpu: number;
  walsenderUsPerEvent: number;
  brokerCpu: number | null;
  brokerUsPerMsg: number | null;
  otherCpu: number;
  hostBusyPct: number;
  /** The largest relay's peak RSS. */
  peakRssMiB: number;
  /** The busiest shard's messages against an even split (1.00 = even). */
  skew: number;
}

export interface ShardsOutcome {
  backlog: BacklogInfo;
  summary: ShardsSummary[];
  runs: ShardsRun[];
  /** Each run's decode probe, and their medians in µs per WAL event (null: Postgres elsewhere). */
  probes: Array<DecodeProbe & { run: number }>;
  decodeUsPerEvent: { other: number | null; filtered: number | null };
  /**
   * One walsender's CPU per WAL event, fitted (least squares, every shard of every run) as
   * `perWalEventUs + perSentEventUs / N`: what a slot pays for each event of the WAL whether it
   * sends it or not (decoding, the row filter, skipping), and what sending one of its own costs.
   * The primary then pays `N × perWalEventUs + perSentEventUs` per event. Null with one N.
   */
  walsenderFit: { perWalEventUs: number; perSentEventUs: number } | null;
}

const execFileP = promisify(execFile);
const shardName = (base: string, i: number, n: number): string => `${base}_${i}_of_${n}`;

export async function runShards(ctx: BenchContext, spec: BacklogSpec, counts: readonly number[], runs: number): Promise<ShardsOutcome> {
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-bench-'));
  // Base names: setup makes `<base>_<i>_of_<n>` of each. One base per N: outboxd refuses to set
  // up a second shard count beside a live one (postgres/shard-sets.ts).
  const template = (n: number) => `ts${n}_${ctx.tag}`;
  const publication = `pub_${spec.name}`;
  let b: Backlog | null = null;
  const results: ShardsRun[] = [];
  const probes: ShardsOutcome['probes'] = [];
  try {
    b = await createBacklog(ctx.db, spec, {
      beforeSlots: async (table) => {
        await createProbePublications(ctx.db, table);
        for (const n of counts) await setup(ctx, dir, table, template(n), publication, n);
      },
    });
    for (let r = 1; r <= runs; r++) {
      const order = counts.map((_, i) => counts[(i + r - 1) % counts.length] as number);
      note(`shards run ${r}/${runs}: decode probe, then ${order.join(', ')} shard(s)`);
      const p = await probeDecode(ctx.services.dbUrl, b.table, b.template, b.endLsn);
      probes.push({ run: r, ...p });
      note(
        `  decoding alone: ${p.other.cpuSeconds?.toFixed(2)} s of CPU (${p.other.seconds.toFixed(2)} s); with the shard filter on every row: ` +
          `${p.filtered.cpuSeconds?.toFixed(2)} s (${p.filtered.seconds.toFixed(2)} s); messages ${p.other.messages}, ${p.filtered.messages}`,
      );
      for (const n of order) results.push(await drainShards(ctx, b, dir, template(n), publication, n, r));
    }
    const perEvent = (xs: Array<number | null>): number | null => {
      const m = med(xs);
      return Number.isFinite(m) && b ? (m / b.rows) * 1e6 : null;
    };
    return {
      backlog: backlogInfo(b),
      summary: counts.map((n) => summarizeShards(n, results)),
      runs: results,
      probes,
      decodeUsPerEvent: {
        other: perEvent(probes.map((p) => p.other.cpuSeconds)),
        filtered: perEvent(probes.map((p) => p.filtered.cpuSeconds)),
      },
      walsenderFit: fitWalsender(results),
    };
  } finally {
    for (const n of counts) for (let i = 0; i < n; i++) await dropSlot(ctx.db, shardName(template(n), i, n)).catch(() => undefined);
    if (b) {
      for (const n of counts)
        for (let i = 0; i < n; i++) await ctx.db.query(`DROP PUBLICATION IF EXISTS ${shardName(publication, i, n)}`).catch(() => undefined);
      await dropBacklog(ctx.db, b);
      await dropProbePublications(ctx.db, b.table).catch(() => undefined);
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `outboxd setup -c FILE` for N shards: every shard's publication (its row filter) and slot. */
async function setup(ctx: BenchContext, dir: string, table: string, slot: string, publication: string, n: number): Promise<void> {
  const cfg = join(dir, `setup-${n}.yaml`);
  const sinkYaml = 'sink:\n  type: stdout\n';
  const port = await getFreePort();
  writeFileSync(
    cfg,
    relayYaml({ dbUrl: ctx.services.dbUrl, slot, publication, table, port, sinkYaml, pipelineYaml: '', shard: { index: 0, count: n } }),
  );
  const { stdout } = await execFileP(process.execPath, [MAIN, 'setup', '-c', cfg], { env: outboxdEnv(ctx) });
  const made = stdout.split('\n').filter((l) => l.startsWith('-- replication slot'));
  if (made.length !== n) throw new Error(`outboxd setup for ${n} shard(s) reported ${made.length} slots:\n${stdout}`);
  note(`  setup, ${n} shard(s): ${made.map((l) => l.replace('-- replication slot ', '')).join('; ')}`);
}

async function drainShards(
  ctx: BenchContext,
  b: Backlog,
  dir: string,
  template: string,
  publication: string,
  n: number,
  r: number,
): Promise<ShardsRun> {
  const name = `s${n}r${r}_${ctx.tag}`;
  const slot = `c_${name}`;
  const topic = `bench.${name}.order`;
  const relays: Child[] = [];
  const ports: number[] = [];
  // A connection per shard to poll its slot: the pollers run side by side.
  const pollers: pg.Client[] = [];
  try {
    for (let i = 0; i < n; i++) pollers.push(await connect(ctx.services.dbUrl));
    for (let i = 0; i < n; i++) await copySlot(ctx.db, shardName(template, i, n), shardName(slot, i, n));
    await ctx.brokers.createTopic(topic, ctx.kafkaPartitions);
    const cfgs: string[] = [];
    for (let i = 0; i < n; i++) {
      const port = await getFreePort();
      const cfg = join(dir, `${name}-${i}.yaml`);
      const sinkYaml = `sink:\n  type: kafka\n  kafka:\n    brokers: [${(ctx.services.kafka ?? []).join(', ')}]\n    topic: bench.${name}.{aggregatetype}\n${ctx.compression === 'none' ? '' : `    compression: ${ctx.compression}\n`}`;
      writeFileSync(
        cfg,
        relayYaml({
          dbUrl: ctx.services.dbUrl,
          slot,
          publication,
          table: b.table,
          port,
          sinkYaml,
          pipelineYaml: ctx.pipelineYaml,
          shard: { index: i, count: n },
        }),
      );
      ports.push(port);
      cfgs.push(cfg);
    }
    const brokerPids = ctx.services.kafkaPids;
    const before = counters(brokerPids);
    for (const [i, cfg] of cfgs.entries())
      relays.push(startChild(process.execPath, [...nodeArgs(ctx, null, `${name}-${i}`), MAIN, 'run', '-c', cfg], outboxdEnv(ctx)));
    const span = { rows: b.rows, lsn: b.endLsn };
    const watches: Watch[] = await Promise.all(
      relays.map((c, i) => watchDrain(pollers[i] as pg.Client, shardName(slot, i, n), span, c, false)),
    );
    // Read everything while the relays still live: CPU, peak RSS, then their own counters.
    const perShard: ShardResult[] = [];
    const started = Math.min(...relays.map((c) => c.spawnedAt));
    for (const [i, c] of relays.entries()) {
      const w = watches[i] as Watch;
      const cpu = cpuSeconds(c.pid) ?? w.consumerCpu;
      perShard.push({
        index: i,
        published: 0,
        seconds: (w.doneAt - started) / 1000,
        relayCpu: cpu,
        relayStreamCpu: cpu !== null && w.consumerCpuAtActive !== null ? cpu - w.consumerCpuAtActive : null,
        walsenderCpu: (w.walsenderPid !== null ? cpuSeconds(w.walsenderPid) : null) ?? w.walsenderCpu,
        peakRssMiB: memory(c.pid)?.peakMiB ?? w.consumerPeakMiB,
      });
    }
    const after = counters(brokerPids);
    for (const [i, port] of ports.entries())
      (perShard[i] as ShardResult).published = metricSum(await scrape(port), 'outboxd_messages_published_total');
    for (const c of relays) await stopChild(c);
    const bad = relays.find((c) => c.exitCode !== 0);
    if (bad) throw new Error(`a relay exited ${bad.exitCode ?? bad.signal} on SIGTERM\n${bad.stderrTail().slice(-2000)}`);
    const messages = await ctx.brokers.topicCount(topic);

    const done = Math.max(...watches.map((w) => w.doneAt));
    const active = watches.map((w) => w.activeAt).filter((t): t is number => t !== null);
    const sum = (xs: Array<number | null>): number | null =>
      xs.some((x) => x === null) ? null : xs.reduce<number>((s, x) => s + (x ?? 0), 0);
    const relayCpu = sum(perShard.map((s) => s.relayCpu));
    const walsenderCpu = sum(perShard.map((s) => s.walsenderCpu));
    const brokerCpu = brokerPids.length > 0 ? after.broker - before.broker : null;
    const busy = after.host.busy - before.host.busy;
    const hostTotal = after.host.total - before.host.total;
    const published = perShard.reduce((s, x) => s + x.published, 0);
    const res: ShardsRun = {
      shards: n,
      run: r,
      ok: messages === b.rows && published === b.rows,
      rows: b.rows,
      messages,
      perShard,
      seconds: (done - started) / 1000,
      streamSeconds: active.length === n ? (done - Math.min(...active)) / 1000 : null,
      msgsPerSec: b.rows / ((done - started) / 1000),
      relayCpu,
      relayStreamCpu: sum(perShard.map((s) => s.relayStreamCpu)),
      walsenderCpu,
      brokerCpu,
      otherCpu: Math.max(0, busy - (relayCpu ?? 0) - (walsenderCpu ?? 0) - (brokerCpu ?? 0)),
      hostBusyPct: hostTotal > 0 ? (100 * busy) / hostTotal : Number.NaN,
    };
    if (!res.ok) res.error = `expected ${b.rows} messages; the topic holds ${messages}, the shards published ${published}`;
    note(
      `  ${n} shard(s) ${res.ok ? '' : 'FAILED '}${Math.round(res.msgsPerSec).toLocaleString('en-US')} msgs/s in ${res.seconds.toFixed(2)} s, ` +
        `relays ${perShard.map((s) => s.relayCpu?.toFixed(2)).join('+')} s, walsenders ${perShard.map((s) => s.walsenderCpu?.toFixed(2)).join('+')} s, ` +
        `broker ${brokerCpu?.toFixed(2) ?? 'n/a'} s, other ${res.otherCpu.toFixed(2)} s, host ${res.hostBusyPct.toFixed(0)}% busy; ` +
        `published ${perShard.map((s) => s.published).join('+')}${res.error ? `: ${res.error}` : ''}`,
    );
    return res;
  } catch (err) {
    const error = (err as Error).message;
    note(`  ${n} shard(s) FAILED: ${error.split('\n')[0]}`);
    return failed(n, r, b.rows, error);
  } finally {
    for (const c of relays) await stopChild(c, 5_000);
    for (const p of pollers) await p.end().catch(() => undefined);
    for (let i = 0; i < n; i++) await dropSlot(ctx.db, shardName(slot, i, n)).catch(() => undefined);
    await ctx.brokers.deleteTopic(topic).catch(() => undefined);
  }
}

function failed(shards: number, run: number, rows: number, error: string): ShardsRun {
  return {
    shards,
    run,
    ok: false,
    error,
    rows,
    messages: null,
    perShard: [],
    seconds: Number.NaN,
    streamSeconds: null,
    msgsPerSec: Number.NaN,
    relayCpu: null,
    relayStreamCpu: null,
    walsenderCpu: null,
    brokerCpu: null,
    otherCpu: Number.NaN,
    hostBusyPct: Number.NaN,
  };
}

const med = (xs: Array<number | null | undefined>): number => median(xs.filter((x): x is number => typeof x === 'number'));

export function summarizeShards(n: number, results: readonly ShardsRun[]): ShardsSummary {
  const all = results.filter((r) => r.shards === n);
  const ok = all.filter((r) => r.ok);
  const rows = all[0]?.rows ?? 0;
  const perM = (cpu: number): number => (cpu / rows) * 1e6;
  const rate = ok.map((r) => r.msgsPerSec);
  const walsenderPerShard = med(ok.map((r) => (r.walsenderCpu === null ? null : r.walsenderCpu / n)));
  const broker = med(ok.map((r) => r.brokerCpu));
  return {
    shards: n,
    runs: all.length,
    ok: ok.length,
    rows,
    msgsPerSec: { median: median(rate), min: min(rate), max: max(rate) },
    streamMsgsPerSec: med(ok.map((r) => (r.streamSeconds ? rows / r.streamSeconds : null))),
    seconds: med(ok.map((r) => r.seconds)),
    relayCpu: med(ok.map((r) => r.relayCpu)),
    relayUsPerMsg: perM(med(ok.map((r) => r.relayCpu))),
    relayStreamUsPerMsg: perM(med(ok.map((r) => r.relayStreamCpu))),
    walsenderCpuPerShard: walsenderPerShard,
    walsenderUsPerEventPerShard: perM(walsenderPerShard),
    walsenderCpu: med(ok.map((r) => r.walsenderCpu)),
    walsenderUsPerEvent: perM(med(ok.map((r) => r.walsenderCpu))),
    brokerCpu: Number.isFinite(broker) ? broker : null,
    brokerUsPerMsg: Number.isFinite(broker) ? perM(broker) : null,
    otherCpu: med(ok.map((r) => r.otherCpu)),
    hostBusyPct: med(ok.map((r) => r.hostBusyPct)),
    peakRssMiB: med(ok.map((r) => max(r.perShard.map((s) => s.peakRssMiB ?? Number.NaN)))),
    skew: med(ok.map((r) => (max(r.perShard.map((s) => s.published)) * n) / rows)),
  };
}

/** Least squares of each walsender's µs per WAL event against 1/N (see ShardsOutcome.walsenderFit). */
export function fitWalsender(results: readonly ShardsRun[]): ShardsOutcome['walsenderFit'] {
  const points: Array<[number, number]> = [];
  for (const r of results.filter((x) => x.ok))
    for (const s of r.perShard) if (s.walsenderCpu !== null) points.push([1 / r.shards, (s.walsenderCpu / r.rows) * 1e6]);
  if (new Set(points.map(([x]) => x)).size < 2) return null;
  const mx = points.reduce((t, [x]) => t + x, 0) / points.length;
  const my = points.reduce((t, [, y]) => t + y, 0) / points.length;
  const sxy = points.reduce((t, [x, y]) => t + (x - mx) * (y - my), 0);
  const sxx = points.reduce((t, [x]) => t + (x - mx) ** 2, 0);
  const slope = sxy / sxx;
  return { perWalEventUs: my - slope * mx, perSentEventUs: slope };
}

const int = (x: number | null): string => (x === null || !Number.isFinite(x) ? '–' : Math.round(x).toLocaleString('en-US'));
const f2 = (x: number | null): string => (x === null || !Number.isFinite(x) ? '–' : x.toFixed(2));

export function shardsTable(o: ShardsOutcome): string {
  const b = o.backlog;
  return [
    `== shards: ${int(b.rows)} rows, ${b.rowsPerTxn}/txn, ${b.avgPayloadBytes} B payloads, ${b.keys} keys, ${b.walMiB} MiB WAL; N relays into one Kafka topic, started together (medians of runs; CPU in s, and µs per message)`,
    table(
      [
        'shards',
        'ok',
        'msgs/s',
        'range',
        'stream msgs/s',
        'relays s',
        'relay µs/msg',
        'stream µs/msg',
        'walsender s/shard',
        'µs/event/shard',
        'walsenders s',
        'walsenders µs/msg',
        'broker s',
        'broker µs/msg',
        'other s',
        'host %',
        'peak RSS MiB',
        'skew',
      ],
      o.summary.map((s) => [
        String(s.shards),
        `${s.ok}/${s.runs}`,
        int(s.msgsPerSec.median),
        `${int(s.msgsPerSec.min)}–${int(s.msgsPerSec.max)}`,
        int(s.streamMsgsPerSec),
        f2(s.relayCpu),
        f2(s.relayUsPerMsg),
        f2(s.relayStreamUsPerMsg),
        f2(s.walsenderCpuPerShard),
        f2(s.walsenderUsPerEventPerShard),
        f2(s.walsenderCpu),
        f2(s.walsenderUsPerEvent),
        f2(s.brokerCpu),
        f2(s.brokerUsPerMsg),
        f2(s.otherCpu),
        s.hostBusyPct.toFixed(0),
        s.peakRssMiB.toFixed(0),
        f2(s.skew),
      ]),
    ),
    `decoding alone, in a backend (no row sent; median of runs): ${f2(o.decodeUsPerEvent.other)} µs per WAL event; ` +
      `with the shard filter evaluated on every row: ${f2(o.decodeUsPerEvent.filtered)} µs`,
    o.walsenderFit
      ? `one walsender per WAL event ≈ ${f2(o.walsenderFit.perWalEventUs)} + ${f2(o.walsenderFit.perSentEventUs)} / N µs (least squares over every shard of every run); ` +
        `the primary pays N × ${f2(o.walsenderFit.perWalEventUs)} + ${f2(o.walsenderFit.perSentEventUs)} µs per event`
      : 'one N only: no fit of the walsender cost against N',
  ].join('\n');
}
