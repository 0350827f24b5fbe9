/**
 * The runtime outboxd brings with it, however it is started (`node dist/main.js`, the npm bin,
 * `npx`, the container): V8's heap sized for a relay that runs for good beside a database, and
 * glibc's malloc kept to two arenas. V8 sizes the young generation when it creates the heap, so
 * `v8.setFlagsFromString` at start-up is too late, and `--heap-growing-percent` is not allowed in
 * NODE_OPTIONS; the only way to bring them is to start node again with them. `process.execve`
 * replaces this process in place (same pid, same stdio, signals still reach it), before anything
 * else is loaded (main.ts). Measured in docs/benchmarks.md ("Peak RSS"): without these settings
 * a Kafka relay at 2,000 events/s grows to about 217 MB, with them it stays near 125.
 *
 * - Anything the operator set wins: a flag already on node's command line or in NODE_OPTIONS, a
 *   MALLOC_ARENA_MAX already in the environment, is left as it is.
 * - `OUTBOXD_RUNTIME=inherit` runs outboxd exactly as node was started (V8's defaults unless
 *   flags were passed).
 * - Where `process.execve` does not exist (Node before 22.15 and 23.11), or fails, outboxd runs
 *   as started: the settings save memory, they are not needed for correctness.
 */

import type { ResourceLimits } from 'node:worker_threads';
import v8 from 'node:v8';

/** The V8 flags: a 4 MiB semi-space, and an old generation that grows to twice its live size before the next mark-compact. */
export const RUNTIME_FLAGS: readonly string[] = ['--max-semi-space-size=4', '--heap-growing-percent=100'];

/** The environment: malloc's arenas bounded (one per thread by default, each holding freed memory). */
export const RUNTIME_ENV: Readonly<Record<string, string>> = { MALLOC_ARENA_MAX: '2' };

/** `inherit`, set by the operator; `applied`, set by outboxd in the process it starts again. */
export const RUNTIME_VAR = 'OUTBOXD_RUNTIME';

export interface RuntimePlan {
  /** The flags to add in front of node's own. */
  flags: string[];
  /** The variables to add to the environment. */
  env: Record<string, string>;
}

/**
 * What is missing from this process's start for outboxd's runtime, or null when nothing is (or
 * the operator asked to run as started, or this process is the one outboxd started again).
 */
export function runtimePlan(execArgv: readonly string[], env: NodeJS.ProcessEnv): RuntimePlan | null {
  const mode = env[RUNTIME_VAR];
  if (mode === 'inherit' || mode === 'applied') return null;
  const given = new Set([...execArgv, ...(env.NODE_OPTIONS ?? '').split(/\s+/)].map(flagName).map(canonical));
  const flags = RUNTIME_FLAGS.filter((f) => !given.has(canonical(flagName(f))));
  const extra: Record<string, string> = {};
  for (const [k, v] of Object.entries(RUNTIME_ENV)) if (env[k] === undefined) extra[k] = v;
  if (flags.length === 0 && Object.keys(extra).length === 0) return null;
  return { flags, env: extra };
}

/** `--max-semi-space-size=8` → `--max-semi-space-size`. */
const flagName = (arg: string) => arg.split('=')[0] as string;
/** V8 takes `--max_semi_space_size` for `--max-semi-space-size`. */
const canonical = (name: string) => name.replaceAll('_', '-');

/**
 * Starts node again with outboxd's runtime, in this process's place, when something is missing;
 * returns when nothing is (or it cannot). In the process started again, removes the marker from
 * the environment, so that nothing outboxd starts inherits it.
 */
export function bringOwnRuntime(): void {
  if (process.env[RUNTIME_VAR] === 'applied') {
    delete process.env[RUNTIME_VAR];
    return;
  }
  const plan = runtimePlan(process.execArgv, process.env);
  if (plan === null || typeof process.execve !== 'function') return;
  const argv = [process.execPath, ...plan.flags, ...process.execArgv, ...process.argv.slice(1)];
  try {
    process.execve(process.execPath, argv, { ...process.env, ...plan.env, [RUNTIME_VAR]: 'applied' });
  } catch (err) {
    process.stderr.write(
      `outboxd: warning: could not start node again with ${plan.flags.join(' ')}: ${(err as Error).message}; running as started\n`,
    );
  }
}

/** A worker thread's young generation (sink.kafka.workers): three times a 1 MiB semi-space. */
export const WORKER_YOUNG_GENERATION_MB = 3;

/**
 * The heap limits of a worker thread, to pass as its `resourceLimits`. V8 lets the process-wide
 * `--max-semi-space-size` win over a new isolate's own limits (Heap::ConfigureHeap), so with
 * RUNTIME_FLAGS every worker would get the main thread's 4 MiB semi-spaces whatever it asks for;
 * a worker that only frames and sends records needs a quarter of that. V8 reads the flag only
 * when it configures a new isolate's heap, and the main thread's is configured before any of
 * this runs: set back to 0 (unset), the flag leaves the main thread's heap as it is and lets each
 * worker's own limit decide (test/unit/runtime.test.ts).
 */
export function workerResourceLimits(): ResourceLimits {
  v8.setFlagsFromString('--max-semi-space-size=0');
  return { maxYoungGenerationSizeMb: WORKER_YOUNG_GENERATION_MB };
}
