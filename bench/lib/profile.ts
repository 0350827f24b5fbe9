import { readFileSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { table } from './summary.js';

/** Summaries of V8 .cpuprofile files (node --cpu-prof): self and total time per function. */

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
  columnNumber: number;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  hitCount?: number;
  children?: number[];
}
interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples?: number[];
  timeDeltas?: number[];
}

export interface FunctionTime {
  name: string;
  where: string;
  selfMs: number;
  totalMs: number;
}

/**
 * Stages of outboxd's hot path, decided by the frames on a sample's stack (first match wins, so
 * a stage's time includes what it calls: the allocations it makes, its promise jobs).
 */
const STAGES: ReadonlyArray<[string, (frames: readonly CallFrame[]) => boolean]> = [
  ['(garbage collector)', (f) => f[0]?.functionName === '(garbage collector)'],
  ['(idle)', (f) => f[0]?.functionName === '(idle)'],
  [
    'outboxd: publish + settle (Pipeline.run/publishBatch, sink)',
    (f) => f.some((x) => /dist\/(pipeline\/pipeline|sink\/)/.test(x.url) && /run|publishBatch|publish|send/.test(x.functionName)),
  ],
  [
    'outboxd: change handler (Ingest → mapper → pipeline.push)',
    (f) => f.some((x) => x.url.includes('/dist/pipeline/ingest.js') || x.url.includes('/dist/outbox/')),
  ],
  [
    'outboxd: pgoutput decoding (source/pgoutput, stream.onCopyData)',
    (f) => f.some((x) => /dist\/source\/(pgoutput|stream)\.js/.test(x.url)),
  ],
  ['pg-logical-replication (connection set-up)', (f) => f.some((x) => /pg-logical-replication|eventemitter2/.test(x.url))],
  ['pg / pg-protocol: socket reads, CopyData framing', (f) => f.some((x) => /node_modules\/pg(-protocol)?\//.test(x.url))],
  ['outboxd: other (timers, metrics, HTTP)', (f) => f.some((x) => x.url.includes('/dist/'))],
  ['kafkajs', (f) => f.some((x) => x.url.includes('/kafkajs/'))],
  ['amqplib', (f) => f.some((x) => x.url.includes('/amqplib/'))],
];

export interface ProfileSummary {
  file: string;
  sampledMs: number;
  /** Time by hot-path stage (see STAGES); sums to sampledMs. */
  stages: Array<{ stage: string; ms: number }>;
  /** Self time by area: outboxd, a node_modules package, node internals, GC, idle, program. */
  areas: Array<{ area: string; selfMs: number }>;
  functions: FunctionTime[];
}

function where(cf: CallFrame): string {
  const url = cf.url.replace(/^file:\/\//, '');
  if (!url) return '';
  const nm = url.lastIndexOf('/node_modules/');
  const short = nm >= 0 ? url.slice(nm + '/node_modules/'.length) : url.includes('/dist/') ? `dist/${url.split('/dist/').pop()}` : url;
  return `${short}:${cf.lineNumber + 1}`;
}

function area(cf: CallFrame): string {
  const url = cf.url;
  if (!url) return cf.functionName.startsWith('(') ? cf.functionName : '(native)';
  if (url.startsWith('node:')) return 'node internals';
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) {
    const rest = url.slice(nm + '/node_modules/'.length).split('/');
    return rest[0]?.startsWith('@') ? `${rest[0]}/${rest[1]}` : (rest[0] ?? '?');
  }
  if (url.includes('/dist/')) return 'outboxd (dist/)';
  return url;
}

export function summarizeProfile(file: string): ProfileSummary {
  const p = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const selfMs = new Map<number, number>();
  if (p.samples && p.timeDeltas) {
    // Each sample's time is the delta to the next one.
    for (let i = 0; i < p.samples.length; i++) {
      const id = p.samples[i] as number;
      const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
      selfMs.set(id, (selfMs.get(id) ?? 0) + dt);
    }
  } else {
    const total = (p.endTime - p.startTime) / 1000;
    const hits = p.nodes.reduce((n, x) => n + (x.hitCount ?? 0), 0) || 1;
    for (const n of p.nodes) selfMs.set(n.id, ((n.hitCount ?? 0) / hits) * total);
  }
  // Total (inclusive) time: self of the subtree, each function counted once per stack.
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const key = (cf: CallFrame): string => `${cf.functionName || '(anonymous)'}|${where(cf)}`;
  const fn = new Map<string, FunctionTime>();
  const areas = new Map<string, number>();
  const stages = new Map<string, number>();
  let sampled = 0;
  for (const [id, ms] of selfMs) {
    const node = byId.get(id);
    if (!node || ms === 0) continue;
    sampled += ms;
    const frames: CallFrame[] = [];
    for (let cur: ProfileNode | undefined = node; cur; cur = byId.get(parent.get(cur.id) ?? -1)) frames.push(cur.callFrame);
    const stage = STAGES.find(([, match]) => match(frames))?.[0] ?? 'other (node internals, start-up)';
    stages.set(stage, (stages.get(stage) ?? 0) + ms);
    const a = area(node.callFrame);
    areas.set(a, (areas.get(a) ?? 0) + ms);
    const seen = new Set<string>();
    for (let cur: ProfileNode | undefined = node, first = true; cur; cur = byId.get(parent.get(cur.id) ?? -1), first = false) {
      const k = key(cur.callFrame);
      let f = fn.get(k);
      if (!f) {
        f = { name: cur.callFrame.functionName || '(anonymous)', where: where(cur.callFrame), selfMs: 0, totalMs: 0 };
        fn.set(k, f);
      }
      if (first) f.selfMs += ms;
      if (!seen.has(k)) {
        f.totalMs += ms;
        seen.add(k);
      }
    }
  }
  return {
    file,
    sampledMs: sampled,
    stages: [...stages].map(([stage, ms]) => ({ stage, ms })).sort((x, y) => y.ms - x.ms),
    areas: [...areas].map(([a, ms]) => ({ area: a, selfMs: ms })).sort((x, y) => y.selfMs - x.selfMs),
    functions: [...fn.values()].sort((x, y) => y.selfMs - x.selfMs),
  };
}

export function profileReport(s: ProfileSummary, top: number): string {
  const pct = (ms: number): string => `${((100 * ms) / s.sampledMs).toFixed(1)}%`;
  const busy = s.sampledMs - (s.areas.find((a) => a.area === '(idle)')?.selfMs ?? 0);
  const own = s.functions.filter((f) => f.where.startsWith('dist/')).sort((a, b) => b.totalMs - a.totalMs);
  return [
    `== cpu profile ${basename(s.file)}: ${(s.sampledMs / 1000).toFixed(2)} s sampled, ${(busy / 1000).toFixed(2)} s not idle`,
    table(
      ['stage (inclusive; first match)', 'ms', 'share'],
      s.stages.map((x) => [x.stage, x.ms.toFixed(0), pct(x.ms)]),
    ),
    '',
    table(
      ['area (self time)', 'ms', 'share'],
      s.areas.slice(0, 12).map((a) => [a.area, a.selfMs.toFixed(0), pct(a.selfMs)]),
    ),
    '',
    table(
      ['top functions by self time', 'where', 'self ms', 'self', 'total ms'],
      s.functions.slice(0, top).map((f) => [f.name, f.where, f.selfMs.toFixed(0), pct(f.selfMs), f.totalMs.toFixed(0)]),
    ),
    '',
    table(
      ['outboxd functions by total time', 'where', 'total ms', 'total', 'self ms'],
      own.slice(0, top).map((f) => [f.name, f.where, f.totalMs.toFixed(0), pct(f.totalMs), f.selfMs.toFixed(0)]),
    ),
  ].join('\n');
}

export function summarizeProfiles(dir: string, top: number): string {
  const files = readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'));
  if (files.length === 0) return `(no .cpuprofile in ${dir})`;
  return files.map((f) => profileReport(summarizeProfile(join(dir, f)), top)).join('\n\n');
}
