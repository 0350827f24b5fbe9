import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { RUNTIME_FLAGS, runtimePlan } from '../../src/runtime.js';

const ROOT = join(import.meta.dirname, '../..');
/** src/runtime.ts as a probe script imports it: Node 24 loads it as it is (type stripping), as dist/main.js loads runtime.js. */
const RUNTIME_TS = JSON.stringify(pathToFileURL(join(ROOT, 'src/runtime.ts')).href);
/** Short-lived garbage, so the young generation grows to what the limits allow, and collects as often as they make it. */
const CHURN = `const keep = [];
for (let i = 0; i < 3e6; i++) { const o = { i, s: 'x' + i }; if (i % 1000 === 0) keep[i % 7] = o; }`;

/** Runs `source` as a script of its own in a new node, and returns its pid and what it printed, parsed. */
function runProbe<T>(source: string, nodeArgs: string[], args: string[], env?: NodeJS.ProcessEnv): { pid: number; seen: T } {
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-runtime-'));
  try {
    const file = join(dir, 'probe.mjs');
    writeFileSync(file, source);
    const r = spawnSync(process.execPath, ['--no-warnings', ...nodeArgs, file, ...args], { encoding: 'utf8', env });
    expect(r.status, r.stderr).toBe(0);
    return { pid: r.pid, seen: JSON.parse(r.stdout) as T };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('outboxd brings its own runtime (src/runtime.ts)', () => {
  it('adds every flag and variable that is missing', () => {
    expect(runtimePlan([], {})).toEqual({ flags: [...RUNTIME_FLAGS], env: { MALLOC_ARENA_MAX: '2' } });
  });

  it("leaves what the operator set: a flag on node's command line or in NODE_OPTIONS, a variable", () => {
    expect(runtimePlan(['--max-semi-space-size=32'], {})?.flags).toEqual(['--heap-growing-percent=100']);
    expect(runtimePlan(['--max_semi_space_size=32', '--heap-growing-percent=50'], {})?.flags).toEqual([]);
    expect(runtimePlan([], { NODE_OPTIONS: '--max-semi-space-size=4 --enable-source-maps' })?.flags).toEqual([
      '--heap-growing-percent=100',
    ]);
    expect(runtimePlan([...RUNTIME_FLAGS], { MALLOC_ARENA_MAX: '8' })).toBeNull();
    expect(runtimePlan([...RUNTIME_FLAGS], {})).toEqual({ flags: [], env: { MALLOC_ARENA_MAX: '2' } });
  });

  it('runs as started with OUTBOXD_RUNTIME=inherit, and never twice', () => {
    expect(runtimePlan([], { OUTBOXD_RUNTIME: 'inherit' })).toBeNull();
    expect(runtimePlan([], { OUTBOXD_RUNTIME: 'applied' })).toBeNull();
  });

  it('a script started with plain `node` runs again with them, in the same pid, with its arguments', () => {
    const source = `import { bringOwnRuntime } from ${RUNTIME_TS};
bringOwnRuntime();
const v8 = await import('node:v8');
${CHURN}
const young = v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space');
console.log(JSON.stringify({ pid: process.pid, execArgv: process.execArgv, args: process.argv.slice(2),
  arena: process.env.MALLOC_ARENA_MAX ?? null, marker: process.env.OUTBOXD_RUNTIME ?? null, young: young.space_size }));
`;
    const env = { ...process.env };
    delete env.MALLOC_ARENA_MAX;
    delete env.OUTBOXD_RUNTIME;
    delete env.NODE_OPTIONS;
    type Seen = Record<string, unknown> & { execArgv: string[]; young: number };
    const run = (more: NodeJS.ProcessEnv) => runProbe<Seen>(source, [], ['run', '-c', 'x y.yaml'], { ...env, ...more });
    const own = run({});
    expect(own.seen.pid).toBe(own.pid);
    expect(own.seen.execArgv).toEqual([...RUNTIME_FLAGS, '--no-warnings']);
    expect(own.seen.args).toEqual(['run', '-c', 'x y.yaml']);
    expect(own.seen.arena).toBe('2');
    expect(own.seen.marker, 'the marker is not passed on').toBeNull();
    // Inherited: V8's defaults, whose young generation grows far larger than 2 × 8 MiB.
    const inherited = run({ OUTBOXD_RUNTIME: 'inherit' });
    expect(inherited.seen.execArgv).toEqual(['--no-warnings']);
    expect(inherited.seen.arena).toBeNull();
    expect(own.seen.young).toBeLessThanOrEqual(16 * 2 ** 20);
    expect(inherited.seen.young).toBeGreaterThan(16 * 2 ** 20);
  });

  it("a worker thread's young generation is its own limit, not the main thread's flag; the main thread's stays as started", () => {
    // The same short-lived garbage in a worker and then in the main thread, counting scavenges:
    // a young generation a quarter the size collects about four times as often. (new_space's
    // committed size is no exact measure: it may hold a page more than the limit.)
    const source = `import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import v8 from 'node:v8';
import { workerResourceLimits } from ${RUNTIME_TS};
const scavenges = () => {
  const profiler = new v8.GCProfiler();
  profiler.start();
  ${CHURN}
  return profiler.stop().statistics.filter((s) => s.gcType === 'Scavenge').length;
};
if (isMainThread) {
  const own = process.argv[2] === 'own';
  const w = new Worker(new URL(import.meta.url), own ? { resourceLimits: workerResourceLimits() } : {});
  w.on('message', (worker) => { console.log(JSON.stringify({ worker, main: scavenges() })); w.terminate(); });
} else parentPort.postMessage(scavenges());
`;
    const run = (mode: string) => runProbe<{ worker: number; main: number }>(source, [...RUNTIME_FLAGS], [mode]).seen;
    // Without: the worker collects as the main thread does (the flag's 2 × 4 MiB). With: about
    // four times as often (2 × 1 MiB), and the main thread as before.
    const plain = run('plain');
    const own = run('own');
    expect(plain.worker).toBeLessThan(1.5 * plain.main);
    expect(own.worker).toBeGreaterThan(3 * plain.worker);
    expect(own.main).toBeLessThan(1.5 * plain.main);
    expect(own.main).toBeGreaterThan(plain.main / 1.5);
  });
});
