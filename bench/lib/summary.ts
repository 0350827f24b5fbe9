import type { SoakResult } from '../scenarios/soak.js';
import type { Backlog } from './backlog.js';
import type { ConsumerName, ConsumerResult } from './consumers.js';
import { max, median, min } from './stats.js';
import type { LatencyResult } from '../scenarios/latency.js';

export interface Spread {
  median: number;
  min: number;
  max: number;
}

function spread(values: number[]): Spread {
  return { median: median(values), min: min(values), max: max(values) };
}

export interface ConsumerSummary {
  runs: number;
  ok: number;
  /** Rows each run was timed on (less than the backlog for a prefix run). */
  rows: number;
  rowsPerSec: Spread;
  streamRowsPerSec: number;
  seconds: number;
  payloadMiBps: number;
  walMiBps: number | null;
  cpuSeconds: {
    consumer: number | null;
    walsender: number | null;
    broker: number | null;
    /** The broker's CPU less its JIT compiler threads' (median of the runs): its work for the events. */
    brokerWork: number | null;
    other: number | null;
  };
  /** CPU seconds of outboxd (or the client) per million rows. */
  consumerCpuPerMRows: number | null;
  /** The same, start-up excluded (from the moment the slot became active). */
  streamCpuPerMRows: number | null;
  peakRssMiB: Spread | null;
  hostBusyPct: number;
  /** MiB the broker's segments held for the topic when drained (median); null when not measured. */
  brokerMiB?: number | null;
}

export interface BacklogInfo {
  name: string;
  rows: number;
  rowsPerTxn: number;
  keys: number;
  avgPayloadBytes: number;
  walMiB: number;
  writeSeconds: number;
}

export interface ScenarioSummary {
  backlog: BacklogInfo;
  consumers: Partial<Record<ConsumerName, ConsumerSummary>>;
  /**
   * Same-run ratios of rows/s: median over runs (and range), the ratio of the medians, and the
   * median ratio of streaming rates (start-up excluded; null when one side has none).
   */
  ratios: Record<string, Spread & { ofMedians: number; streaming: number | null }>;
}

export function backlogInfo(b: Backlog): BacklogInfo {
  return {
    name: b.name,
    rows: b.rows,
    rowsPerTxn: b.rowsPerTxn,
    keys: b.keys,
    avgPayloadBytes: Math.round(b.avgPayloadBytes),
    walMiB: Math.round((b.walBytes / 2 ** 20) * 10) / 10,
    writeSeconds: Math.round(b.writeSeconds * 10) / 10,
  };
}

const nullable = (v: Array<number | null>): number | null => {
  const m = median(v.filter((x): x is number => x !== null));
  return Number.isFinite(m) ? m : null;
};

export const RATIOS: ReadonlyArray<[ConsumerName, ConsumerName]> = [
  ['outboxd-discard', 'pg_recvlogical'],
  ['outboxd-stdout', 'pg_recvlogical'],
  ['outboxd-kafka', 'bare-kafkajs'],
  ['bare-platformatic', 'bare-kafkajs'],
  ['outboxd-kafka-w1', 'outboxd-kafka-main'],
  ['outboxd-kafka-eos', 'outboxd-kafka'],
  ['outboxd-kafka', 'outboxd-kafka-baseline'],
  ['outboxd-kafka-eos', 'outboxd-kafka-eos-baseline'],
  ['outboxd-kafka-w1', 'outboxd-kafka-w1-baseline'],
  ['outboxd-kafka', 'outboxd-kafka-main'],
  ['outboxd-kafka-lz4', 'outboxd-kafka'],
  ['outboxd-kafka-w2', 'outboxd-kafka-main'],
  ['outboxd-kafka-w3', 'outboxd-kafka-main'],
  ['outboxd-rabbitmq', 'bare-amqplib'],
  ['outboxd-rabbitmq-baseline', 'bare-amqplib'],
  ['outboxd-rabbitmq', 'outboxd-rabbitmq-baseline'],
  ['outboxd-rabbitmq', 'bare-amqplib-batch'],
  ['bare-amqplib-batch', 'bare-amqplib'],
  ['outboxd-rabbitmq-ch4', 'bare-amqplib'],
  ['outboxd-rabbitmq-hash4', 'bare-amqplib'],
  ['outboxd-rabbitmq-hash4-ch4', 'bare-amqplib'],
  ['outboxd-rabbitmq-quorum', 'bare-amqplib'],
  ['outboxd-kafka', 'pg_recvlogical'],
  ['outboxd-rabbitmq', 'pg_recvlogical'],
];

export function summarize(b: Backlog, results: readonly ConsumerResult[]): ScenarioSummary {
  const consumers: Partial<Record<ConsumerName, ConsumerSummary>> = {};
  const by = new Map<ConsumerName, ConsumerResult[]>();
  for (const r of results) by.set(r.consumer, [...(by.get(r.consumer) ?? []), r]);
  for (const [name, rs] of by) {
    const ok = rs.filter((r) => r.ok);
    const rss = ok.map((r) => r.peakRssMiB).filter((x): x is number => x !== null);
    const cpu = nullable(ok.map((r) => r.cpu.consumer));
    const rows = median(rs.map((r) => r.rows));
    consumers[name] = {
      runs: rs.length,
      ok: ok.length,
      rows,
      rowsPerSec: spread(ok.map((r) => r.rowsPerSec)),
      streamRowsPerSec: median(ok.map((r) => r.streamRowsPerSec ?? Number.NaN)),
      seconds: median(ok.map((r) => r.seconds)),
      payloadMiBps: median(ok.map((r) => r.payloadMiBps)),
      walMiBps: nullable(ok.map((r) => r.walMiBps)),
      cpuSeconds: {
        consumer: cpu,
        walsender: nullable(ok.map((r) => r.cpu.walsender)),
        broker: nullable(ok.map((r) => r.cpu.broker)),
        brokerWork: nullable(ok.map((r) => (r.cpu.broker === null ? null : r.cpu.broker - (r.cpu.brokerJit ?? 0)))),
        other: nullable(ok.map((r) => r.cpu.other)),
      },
      consumerCpuPerMRows: cpu === null ? null : (cpu / rows) * 1e6,
      streamCpuPerMRows: ((v) => (v === null ? null : (v / rows) * 1e6))(nullable(ok.map((r) => r.streamCpu))),
      peakRssMiB: rss.length > 0 ? spread(rss) : null,
      hostBusyPct: median(ok.map((r) => r.hostBusyPct)),
      brokerMiB: ((v) => (v === null ? null : v / 2 ** 20))(nullable(ok.map((r) => r.brokerBytes ?? null))),
    };
  }
  const ratios: ScenarioSummary['ratios'] = {};
  for (const [a, base] of RATIOS) {
    const ca = consumers[a];
    const cb = consumers[base];
    if (!ca || !cb) continue;
    const perRun: number[] = [];
    const streaming: number[] = [];
    for (const ra of by.get(a) ?? []) {
      const rb = (by.get(base) ?? []).find((x) => x.run === ra.run && x.ok);
      if (ra.ok && rb) {
        perRun.push(ra.rowsPerSec / rb.rowsPerSec);
        if (ra.streamRowsPerSec && rb.streamRowsPerSec) streaming.push(ra.streamRowsPerSec / rb.streamRowsPerSec);
      }
    }
    const sm = median(streaming);
    ratios[`${a} / ${base}`] = {
      ...spread(perRun),
      ofMedians: ca.rowsPerSec.median / cb.rowsPerSec.median,
      streaming: Number.isFinite(sm) ? sm : null,
    };
  }
  return { backlog: backlogInfo(b), consumers, ratios };
}

export interface ShapeCell {
  payloadBytes: number;
  rowsPerTxn: number;
  backlog: BacklogInfo;
  /** Wall time from process start. */
  rowsPerSec: Partial<Record<ConsumerName, number>>;
  /** While streaming (from the moment the slot became active): what the chart shows. */
  streamRowsPerSec: Partial<Record<ConsumerName, number>>;
  payloadMiBps: Partial<Record<ConsumerName, number>>;
  /** CPU seconds per million rows while streaming (start-up excluded). */
  cpuPerMRows: Partial<Record<ConsumerName, number | null>>;
  ratio: number | null;
  streamRatio: number | null;
}

export function shapeCell(b: Backlog, results: readonly ConsumerResult[]): ShapeCell {
  const s = summarize(b, results);
  const rowsPerSec: ShapeCell['rowsPerSec'] = {};
  const streamRowsPerSec: ShapeCell['streamRowsPerSec'] = {};
  const payloadMiBps: ShapeCell['payloadMiBps'] = {};
  const cpuPerMRows: ShapeCell['cpuPerMRows'] = {};
  for (const [name, c] of Object.entries(s.consumers) as Array<[ConsumerName, ConsumerSummary]>) {
    rowsPerSec[name] = c.rowsPerSec.median;
    streamRowsPerSec[name] = c.streamRowsPerSec;
    payloadMiBps[name] = c.payloadMiBps;
    cpuPerMRows[name] = c.streamCpuPerMRows ?? c.consumerCpuPerMRows;
  }
  return {
    payloadBytes: b.payloadBytes,
    rowsPerTxn: b.rowsPerTxn,
    backlog: s.backlog,
    rowsPerSec,
    streamRowsPerSec,
    payloadMiBps,
    cpuPerMRows,
    ratio: s.ratios['outboxd-discard / pg_recvlogical']?.median ?? null,
    streamRatio: s.ratios['outboxd-discard / pg_recvlogical']?.streaming ?? null,
  };
}

export interface MemorySummary {
  consumer: ConsumerName;
  smallRows: number;
  largeRows: number;
  smallPeakRssMiB: number;
  largePeakRssMiB: number;
  growthMB: number;
  /** Within the large drain: RSS and peak RSS (median of runs) as rows were confirmed. */
  curve: Array<{ rows: number; rssMiB: number; peakMiB: number }>;
}

/** Median RSS curve over runs, by rows confirmed. */
export function rssCurve(results: readonly ConsumerResult[], consumer: ConsumerName): MemorySummary['curve'] {
  const byRows = new Map<number, { rss: number[]; peak: number[] }>();
  for (const r of results) {
    if (r.consumer !== consumer || !r.ok) continue;
    for (const p of r.rssCurve ?? []) {
      const e = byRows.get(p.rows) ?? { rss: [], peak: [] };
      e.rss.push(p.rssMiB);
      e.peak.push(p.peakMiB);
      byRows.set(p.rows, e);
    }
  }
  return [...byRows]
    .sort((a, b) => a[0] - b[0])
    .map(([rows, e]) => ({ rows, rssMiB: Math.round(median(e.rss) * 10) / 10, peakMiB: Math.round(median(e.peak) * 10) / 10 }));
}

export interface Target {
  measure: string;
  target: string;
  value: string;
  met: boolean | null;
}

const MB_PER_MIB = 2 ** 20 / 1e6;

export function targets(s: {
  drain?: ScenarioSummary;
  smallTx?: ScenarioSummary;
  latency?: LatencyResult[];
  memory?: MemorySummary[];
  soak?: SoakResult;
}): Target[] {
  const out: Target[] = [];
  const ratio = (sum: ScenarioSummary | undefined, key: string, measure: string, want: number): void => {
    const r = sum?.ratios[key];
    out.push({
      measure,
      target: `≥ ${want}×`,
      // Met on the whole time; streaming only beside it (for a bare client, its whole time is).
      value: r
        ? `${r.median.toFixed(2)}× (runs ${r.min.toFixed(2)}–${r.max.toFixed(2)}${r.streaming !== null ? `; streaming only ${r.streaming.toFixed(2)}×` : ''})`
        : 'not measured',
      met: r ? r.median >= want : null,
    });
  };
  ratio(s.drain, 'outboxd-discard / pg_recvlogical', 'drain, discarding sink vs pg_recvlogical', 1.25);
  ratio(s.smallTx, 'outboxd-discard / pg_recvlogical', 'small-tx, discarding sink vs pg_recvlogical', 1.5);
  ratio(s.drain, 'outboxd-kafka / bare-kafkajs', 'drain to Kafka vs bare kafkajs', 0.8);
  ratio(s.drain, 'outboxd-rabbitmq / bare-amqplib', 'drain to RabbitMQ vs bare amqplib', 1);
  ratio(s.drain, 'outboxd-rabbitmq / bare-amqplib-batch', 'drain to RabbitMQ vs bare amqplib, batch by batch', 1);
  ratio(
    s.drain,
    'outboxd-rabbitmq-hash4-ch4 / bare-amqplib',
    'drain to RabbitMQ, x-consistent-hash over 4 queues, 4 channels, vs bare amqplib',
    1,
  );
  ratio(s.drain, 'outboxd-kafka-eos / outboxd-kafka', 'drain to Kafka, exactly-once vs at-least-once (issue 24)', 0.9);
  ratio(s.drain, 'outboxd-kafka-lz4 / outboxd-kafka', 'drain to Kafka, lz4 vs uncompressed (issue 24)', 0.8);
  // Issue 24: what exactly-once costs the broker per event, what an event costs the relay.
  // A warm broker's: its CPU less its JIT compiler threads' (a broker just started compiles its
  // transaction paths for minutes; docs/benchmarks.md, "A warm broker"). The whole is shown beside it.
  const brokerOf = (c: ConsumerName) => s.drain?.consumers[c]?.cpuSeconds ?? null;
  const bAlo = brokerOf('outboxd-kafka');
  const bEos = brokerOf('outboxd-kafka-eos');
  const wAlo = bAlo?.brokerWork;
  const wEos = bEos?.brokerWork;
  out.push({
    measure: 'broker CPU per event, exactly-once vs at-least-once, JIT excluded (issue 24)',
    target: '≤ 1.5×',
    value:
      wAlo && wEos
        ? `${(wEos / wAlo).toFixed(2)}× (${wEos.toFixed(2)} vs ${wAlo.toFixed(2)} s; with JIT ${((bEos?.broker ?? 0) / (bAlo?.broker ?? 1)).toFixed(2)}×)`
        : 'not measured',
    met: wAlo && wEos ? wEos / wAlo <= 1.5 : null,
  });
  const perMsg = s.drain?.consumers['outboxd-kafka']?.consumerCpuPerMRows;
  out.push({
    measure: 'relay CPU per Kafka event, at-least-once (issue 24)',
    target: '≤ 6 µs',
    value: perMsg ? `${perMsg.toFixed(2)} µs` : 'not measured',
    met: perMsg ? perMsg <= 6 : null,
  });
  ratio(s.drain, 'outboxd-kafka / outboxd-kafka-baseline', 'drain to Kafka vs the baseline commit (BENCH_BASELINE_REF)', 2);
  ratio(s.drain, 'outboxd-rabbitmq / outboxd-rabbitmq-baseline', 'drain to RabbitMQ vs the baseline commit (BENCH_BASELINE_REF)', 1);
  const eos = s.latency?.find((l) => l.sink === 'kafka-eos')?.insertToReceiptMs;
  out.push({
    measure: 'latency, Kafka exactly-once, commit → visible to a read_committed consumer, p99 (issue 24)',
    target: '≤ 25 ms',
    value: eos ? `${eos.p99.toFixed(1)} ms (p50 ${eos.p50.toFixed(1)} ms)` : 'not measured',
    met: eos ? eos.p99 <= 25 : null,
  });
  const alo = s.drain?.consumers['outboxd-kafka']?.peakRssMiB?.median;
  const eosRss = s.drain?.consumers['outboxd-kafka-eos']?.peakRssMiB?.median;
  out.push({
    measure: 'peak RSS during drain to Kafka, exactly-once minus at-least-once',
    target: '≤ 10 MB',
    value:
      alo !== undefined && eosRss !== undefined
        ? `${((eosRss - alo) * MB_PER_MIB).toFixed(1)} MB (${(eosRss * MB_PER_MIB).toFixed(0)} vs ${(alo * MB_PER_MIB).toFixed(0)} MB)`
        : 'not measured',
    met: alo !== undefined && eosRss !== undefined ? (eosRss - alo) * MB_PER_MIB <= 10 : null,
  });
  const k = s.latency?.find((l) => l.sink === 'kafka');
  const c = k?.commitToConfirmMs;
  out.push({
    measure: 'latency, Kafka, commit → confirm p50',
    target: '≤ 10 ms',
    value: c ? `${c.p50.toFixed(1)} ms (histogram-interpolated)` : 'not measured',
    met: c ? c.p50 <= 10 : null,
  });
  out.push({
    measure: 'latency, Kafka, commit → confirm p99',
    target: '≤ 50 ms',
    value: c ? `${c.p99.toFixed(1)} ms (histogram-interpolated)` : 'not measured',
    met: c ? c.p99 <= 50 : null,
  });
  const seen = k?.insertToReceiptMs;
  out.push({
    measure: `latency, Kafka, INSERT return → receipt p99 (${k?.consumer ?? 'consumer'})`,
    target: '≤ 50 ms',
    value: seen ? `${seen.p99.toFixed(1)} ms (p50 ${seen.p50.toFixed(1)} ms)` : 'not measured',
    met: seen ? seen.p99 <= 50 : null,
  });
  // Issue 24: on every path, however outboxd is started (the bench starts it as `node dist/main.js`).
  for (const c of ['outboxd-kafka', 'outboxd-kafka-main', 'outboxd-kafka-w1', 'outboxd-kafka-eos', 'outboxd-rabbitmq'] as const) {
    const rss = s.drain?.consumers[c]?.peakRssMiB;
    if (!rss && c !== 'outboxd-kafka') continue;
    out.push({
      measure: `peak RSS during drain, ${c}`,
      target: '≤ 150 MB',
      value: rss ? `${(rss.median * MB_PER_MIB).toFixed(0)} MB (max ${(rss.max * MB_PER_MIB).toFixed(0)} MB)` : 'not measured',
      met: rss ? rss.max * MB_PER_MIB <= 150 : null,
    });
  }
  if (s.soak) {
    const g = s.soak.growthMiB;
    out.push({
      measure: `soak: RSS growth after the warm-up, ${s.soak.targetRate} tx/s for ${(s.soak.seconds / 60).toFixed(0)} min (issue 24)`,
      target: '< 5 MB',
      value:
        g === null
          ? 'not measured'
          : `${(g * MB_PER_MIB).toFixed(1)} MB (${s.soak.rssAfterWarmupMiB?.toFixed(1)} → ${s.soak.rssEndMiB?.toFixed(1)} MiB)`,
      met: g === null ? null : g * MB_PER_MIB < 5,
    });
  }
  for (const m of s.memory ?? []) {
    out.push({
      measure: `memory growth ${m.smallRows.toLocaleString('en-US')} → ${m.largeRows.toLocaleString('en-US')} rows, ${m.consumer}`,
      target: '< 20 MB',
      value: `${m.growthMB >= 0 ? '+' : ''}${m.growthMB.toFixed(1)} MB (${(m.smallPeakRssMiB * MB_PER_MIB).toFixed(0)} → ${(m.largePeakRssMiB * MB_PER_MIB).toFixed(0)} MB)`,
      met: Math.abs(m.growthMB) < 20,
    });
  }
  return out;
}

export function memorySummary(
  consumer: ConsumerName,
  small: ScenarioSummary,
  large: ScenarioSummary,
  largeResults: readonly ConsumerResult[],
): MemorySummary | null {
  const a = small.consumers[consumer]?.peakRssMiB?.median;
  const b = large.consumers[consumer]?.peakRssMiB?.median;
  if (a === undefined || b === undefined) return null;
  return {
    consumer,
    smallRows: small.backlog.rows,
    largeRows: large.backlog.rows,
    smallPeakRssMiB: a,
    largePeakRssMiB: b,
    growthMB: (b - a) * MB_PER_MIB,
    curve: rssCurve(largeResults, consumer),
  };
}

export function memoryTable(ms: readonly MemorySummary[]): string {
  const out = ['== memory: peak RSS (MiB) by backlog size, and RSS during the large drain as rows were confirmed'];
  for (const m of ms) {
    out.push(
      `${m.consumer}: ${int(m.smallRows)} rows → peak ${f1(m.smallPeakRssMiB)} MiB; ${int(m.largeRows)} rows → peak ${f1(m.largePeakRssMiB)} MiB (${m.growthMB >= 0 ? '+' : ''}${f1(m.growthMB)} MB)`,
      `  during the ${int(m.largeRows)}-row drain: ${m.curve.map((p) => `${int(p.rows / 1000)}k ${f1(p.rssMiB)}`).join(', ')}`,
    );
  }
  return out.join('\n');
}

// --- text tables ---------------------------------------------------------------------------------

export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

const int = (n: number | null | undefined): string =>
  n === null || n === undefined || !Number.isFinite(n) ? '–' : Math.round(n).toLocaleString('en-US');
const f1 = (n: number | null | undefined): string => (n === null || n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(1));
const f2 = (n: number | null | undefined): string => (n === null || n === undefined || !Number.isFinite(n) ? '–' : n.toFixed(2));

export function scenarioTable(title: string, s: ScenarioSummary): string {
  const b = s.backlog;
  const rows: string[][] = [];
  for (const [name, c] of Object.entries(s.consumers) as Array<[ConsumerName, ConsumerSummary]>) {
    rows.push([
      name,
      `${c.ok}/${c.runs}`,
      int(c.rows),
      int(c.rowsPerSec.median),
      `${int(c.rowsPerSec.min)}–${int(c.rowsPerSec.max)}`,
      int(c.streamRowsPerSec),
      f1(c.payloadMiBps),
      f2(c.cpuSeconds.consumer),
      f2(c.cpuSeconds.walsender),
      f2(c.cpuSeconds.broker),
      f2(c.cpuSeconds.brokerWork),
      f2(c.cpuSeconds.other),
      c.peakRssMiB ? f1(c.peakRssMiB.median) : '–',
      f1(c.hostBusyPct),
      f2(c.consumerCpuPerMRows),
      f1(c.brokerMiB),
    ]);
  }
  const ratioLines = Object.entries(s.ratios).map(
    ([k, r]) =>
      `  ${k}: ${f2(r.median)}× (runs ${f2(r.min)}–${f2(r.max)}; ratio of medians ${f2(r.ofMedians)}×${r.streaming !== null ? `; streaming only ${f2(r.streaming)}×` : ''})`,
  );
  return [
    `== ${title}: ${int(b.rows)} rows, ${b.rowsPerTxn}/txn, ${b.avgPayloadBytes} B payloads, ${b.keys} keys, ${b.walMiB} MiB WAL`,
    table(
      [
        'consumer',
        'ok',
        'rows',
        'rows/s',
        'range',
        'stream rows/s',
        'MiB/s',
        'cpu s',
        'walsender s',
        'broker s',
        'broker s less JIT',
        'other s',
        'peak RSS MiB',
        'host %',
        'cpu µs/msg',
        'broker MiB',
      ],
      rows,
    ),
    ...(ratioLines.length ? ['ratios (same run, median of runs):', ...ratioLines] : []),
  ].join('\n');
}

export function shapeTable(cells: readonly ShapeCell[]): string {
  return [
    '== shape: rows/s by payload size and rows per transaction (median of runs; wall = from process start, stream = while streaming)',
    table(
      [
        'payload',
        'rows/txn',
        'rows',
        'outboxd wall',
        'recvlogical wall',
        'ratio',
        'outboxd stream',
        'recvlogical stream',
        'ratio',
        'outboxd MiB/s',
        'outboxd cpu s/1M rows',
      ],
      cells.map((c) => [
        `${c.payloadBytes} B`,
        String(c.rowsPerTxn),
        int(c.backlog.rows),
        int(c.rowsPerSec['outboxd-discard']),
        int(c.rowsPerSec.pg_recvlogical),
        c.ratio === null ? '–' : `${f2(c.ratio)}×`,
        int(c.streamRowsPerSec['outboxd-discard']),
        int(c.streamRowsPerSec.pg_recvlogical),
        c.streamRatio === null ? '–' : `${f2(c.streamRatio)}×`,
        f1(c.payloadMiBps['outboxd-discard']),
        f1(c.cpuPerMRows['outboxd-discard']),
      ]),
    ),
  ].join('\n');
}

export function latencyTable(ls: readonly LatencyResult[]): string {
  return [
    '== latency: one-row transactions at a steady rate (ms)',
    table(
      [
        'sink',
        'ok',
        'rate',
        'achieved',
        'c→c p50',
        'c→c p99',
        'c→c max ≤',
        'ins→rcv p50',
        'ins→rcv p99',
        'ins→rcv max',
        'relay cpu s',
        'RSS MiB',
      ],
      ls.map((l) => [
        l.sink,
        l.ok ? 'yes' : 'NO',
        String(l.targetRate),
        int(l.achievedRate),
        f1(l.commitToConfirmMs?.p50),
        f1(l.commitToConfirmMs?.p99),
        int(l.commitToConfirmMs?.maxAtMost),
        f1(l.insertToReceiptMs?.p50),
        f1(l.insertToReceiptMs?.p99),
        f1(l.insertToReceiptMs?.max),
        f2(l.relayCpuSeconds),
        f1(l.relayPeakRssMiB),
      ]),
    ),
  ].join('\n');
}

export function soakTable(s: SoakResult): string {
  return [
    `== soak: one-row transactions into Kafka at ${s.targetRate}/s for ${(s.seconds / 60).toFixed(1)} min; RSS after a ${s.warmupSeconds} s warm-up (target: grows < 5 MB)`,
    table(
      ['ok', 'achieved', 'RSS after warm-up MiB', 'RSS at end MiB', 'growth MiB', 'slope MiB/min', 'peak MiB', 'relay cpu s'],
      [
        [
          s.ok ? 'yes' : 'NO',
          int(s.achievedRate),
          f1(s.rssAfterWarmupMiB),
          f1(s.rssEndMiB),
          s.growthMiB === null ? '–' : s.growthMiB.toFixed(2),
          s.slopeMiBPerMinute === null ? '–' : s.slopeMiBPerMinute.toFixed(3),
          f1(s.peakMiB),
          f2(s.relayCpuSeconds),
        ],
      ],
    ),
  ].join('\n');
}

export function targetsTable(ts: readonly Target[]): string {
  return [
    '== targets (issues 6 and 24)',
    table(
      ['measure', 'target', 'measured', 'met'],
      ts.map((t) => [t.measure, t.target, t.value, t.met === null ? '–' : t.met ? 'yes' : 'NO']),
    ),
  ].join('\n');
}
