import { type ChildProcess, spawn } from 'node:child_process';
import { openSync, closeSync } from 'node:fs';
import { Readable } from 'node:stream';
import { sleep } from './log.js';

/** A child process whose stderr tail is kept for error messages; stdout goes to /dev/null. */
export interface Child {
  proc: ChildProcess;
  /** Its stdout, when started with `stdout: 'pipe'`. */
  stdout: NodeJS.ReadableStream;
  pid: number;
  spawnedAt: number;
  exitedAt: number | null;
  exitCode: number | null;
  signal: string | null;
  exited: Promise<void>;
  stderrTail(): string;
}

export function startChild(command: string, args: string[], env: NodeJS.ProcessEnv = process.env, opts: { stdout?: 'pipe' } = {}): Child {
  const devnull = openSync('/dev/null', 'w');
  let proc: ChildProcess;
  try {
    proc = spawn(command, args, { env, stdio: ['ignore', opts.stdout === 'pipe' ? 'pipe' : devnull, 'pipe'] });
  } finally {
    closeSync(devnull);
  }
  let tail = '';
  proc.stderr?.on('data', (d: Buffer) => {
    tail = (tail + d.toString()).slice(-20_000);
  });
  const child: Child = {
    proc,
    stdout: proc.stdout ?? Readable.from([]),
    pid: proc.pid ?? 0,
    spawnedAt: performance.now(),
    exitedAt: null,
    exitCode: null,
    signal: null,
    exited: Promise.resolve(),
    stderrTail: () => tail,
  };
  child.exited = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      child.exitedAt = performance.now();
      child.exitCode = code;
      child.signal = signal;
      resolve();
    });
    proc.once('error', (err) => {
      tail += `\nspawn error: ${err.message}`;
      child.exitedAt ??= performance.now();
      resolve();
    });
  });
  if (!proc.pid) throw new Error(`could not start ${command}`);
  return child;
}

/** SIGTERM, then SIGKILL after `graceMs`. Resolves when the child has exited. */
export async function stopChild(child: Child, graceMs = 30_000): Promise<void> {
  if (child.exitedAt !== null) return;
  child.proc.kill('SIGTERM');
  const done = await Promise.race([child.exited.then(() => true), sleep(graceMs).then(() => false)]);
  if (!done) {
    child.proc.kill('SIGKILL');
    await child.exited;
  }
}
