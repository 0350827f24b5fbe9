/**
 * Process plumbing shared by the service harnesses: a temp dir per service with a log file,
 * children spawned in their own process groups, and a watchdog that kills those groups and
 * deletes the dir if the test runner dies without running its teardown (SIGKILL, crash, ^C
 * on a runner that skips teardown).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { sleep } from './wait.js';
import { closeSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Set OUTBOXD_KEEP_TEST_DIRS=1 to keep service temp dirs (data + logs) after destroy, for debugging. */
export const keepDirs = process.env.OUTBOXD_KEEP_TEST_DIRS === '1';

export interface Owner {
  uid: number;
  gid: number;
}

export interface SpawnOpts {
  env: NodeJS.ProcessEnv;
  owner?: Owner | undefined;
  cwd?: string;
}

// Runs detached (own session), so a ^C in the terminal reaches only the runner. It polls the
// runner's pid; once the runner is gone it signals every process group listed in .pgids,
// waits up to 5 s for the group leaders to exit, SIGKILLs what is left and removes the dir.
// A dead leader can linger as a zombie until init reaps it, hence the look at /proc/PID/stat.
const WATCHDOG = `
parent=$1; dir=$2; sig=$3; grandparent=$5
while kill -0 "$parent" 2>/dev/null && { [ -z "$grandparent" ] || kill -0 "$grandparent" 2>/dev/null; }; do sleep 0.3; done
groups() { cat "$dir/.pgids" 2>/dev/null; }
running() { s=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null | cut -d' ' -f2); [ -n "$s" ] && [ "$s" != Z ]; }
for g in $(groups); do kill -"$sig" -"$g" 2>/dev/null; done
i=0
while [ $i -lt 50 ]; do
  alive=0
  for g in $(groups); do running "$g" && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.1; i=$((i+1))
done
for g in $(groups); do kill -KILL -"$g" 2>/dev/null; done
[ "$4" = keep ] || rm -rf "$dir"
`;

const live = new Set<ServiceDir>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: signal now, the watchdog finishes the cleanup.
  // vitest turns SIGINT/SIGTERM into process.exit(), so this runs on ^C too.
  process.on('exit', () => {
    for (const dir of live) dir.signalAll();
  });
}

export function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/** Resolves true when the child has exited, false on timeout. */
export function waitExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      child.off('exit', onExit);
      resolve(false);
    }, timeoutMs);
    const onExit = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    child.once('exit', onExit);
  });
}

/** Whether any process of group `pgid` is still running (zombies do not count). */
function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  // kill(0) also succeeds while only zombies are left, and orphans (e.g. postgres backends of
  // a SIGKILLed postmaster) are reaped by init, which can take seconds. Look at their state.
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return true; // no procfs: trust kill(0)
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    // "pid (comm) state ppid pgrp ..."; comm may contain spaces and parentheses.
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (pgrp === String(pgid) && state !== 'Z') return true;
  }
  return false;
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // already gone
  }
}

/** A temp dir owning a log file and the process groups started for one service. */
export class ServiceDir {
  readonly logFile: string;
  private readonly groups = new Set<number>();
  private watchdog: ChildProcess | undefined;
  private disposed = false;

  private constructor(
    readonly dir: string,
    readonly name: string,
    private readonly emergencySignal: NodeJS.Signals,
  ) {
    this.logFile = join(dir, `${name}.log`);
  }

  /**
   * @param emergencySignal what to send the groups when the runner dies (SIGQUIT lets
   *   postgres remove its shared memory; SIGKILL is fine for a JVM whose data is discarded)
   * @param owner chown the dir to this user (postgres refuses to run as root)
   */
  static async create(name: string, emergencySignal: NodeJS.Signals, owner?: Owner): Promise<ServiceDir> {
    const dir = await mkdtemp(join(tmpdir(), `outboxd-${name}-`));
    if (owner) {
      await chown(dir, owner.uid, owner.gid);
      await chmod(dir, 0o700);
    }
    const sd = new ServiceDir(dir, name, emergencySignal);
    writeFileSync(sd.logFile, '');
    if (owner) await chown(sd.logFile, owner.uid, owner.gid);
    installExitHook();
    live.add(sd);
    sd.startWatchdog();
    return sd;
  }

  private startWatchdog(): void {
    const sig = this.emergencySignal.replace(/^SIG/, '');
    // In a vitest forks-pool worker also watch the main vitest process: when it is killed or
    // ^C'd, vitest 3 leaves its workers behind (orphaned, busy-looping), so the worker's own
    // death would never come.
    const inForkedWorker = process.env.VITEST_WORKER_ID !== undefined && typeof process.send === 'function';
    const grandparent = inForkedWorker ? String(process.ppid) : '';
    const args = ['-c', WATCHDOG, 'outboxd-watchdog', String(process.pid), this.dir, sig, keepDirs ? 'keep' : '', grandparent];
    const wd = spawn('sh', args, {
      detached: true,
      stdio: 'ignore',
    });
    wd.unref();
    this.watchdog = wd;
  }

  private writePgids(): void {
    writeFileSync(join(this.dir, '.pgids'), [...this.groups].map((g) => `${g}\n`).join(''));
  }

  /** Appends a line to the log (harness progress notes go next to the service's own output). */
  note(line: string): void {
    this.appendLog(`=== ${new Date().toISOString()} ${line}`);
  }

  private appendLog(line: string): void {
    const fd = openSync(this.logFile, 'a');
    try {
      writeSync(fd, `${line}\n`);
    } finally {
      closeSync(fd);
    }
  }

  /** Starts a child in a new process group with stdout+stderr appended to the log file. */
  spawn(command: string, args: readonly string[], opts: SpawnOpts): ChildProcess {
    if (this.disposed) throw new Error(`${this.name}: service dir already disposed`);
    this.appendLog(`\n=== ${new Date().toISOString()} ${command} ${args.join(' ')}`);
    const fd = openSync(this.logFile, 'a');
    let child: ChildProcess;
    try {
      child = spawn(command, args, {
        cwd: opts.cwd ?? this.dir,
        env: opts.env,
        // detached = setsid(): the child leads a new process group we can signal as a whole,
        // and terminal ^C goes to the runner only (which then tears down in order).
        detached: true,
        stdio: ['ignore', fd, fd],
        ...(opts.owner ? { uid: opts.owner.uid, gid: opts.owner.gid } : {}),
      });
    } finally {
      closeSync(fd);
    }
    const pid = child.pid;
    if (pid !== undefined) {
      this.groups.add(pid);
      this.writePgids();
      child.once('exit', () => {
        // A group leader's exit can leave members behind (e.g. postgres backends after a
        // SIGKILLed postmaster); keep tracking the group until it is empty.
        if (!groupAlive(pid)) {
          this.groups.delete(pid);
          if (!this.disposed) this.writePgids();
        }
      });
    }
    // Swallow spawn errors here ('error' would otherwise crash the runner); callers see them
    // through the exit code / readiness checks and the log.
    child.on('error', (err) => {
      try {
        this.appendLog(`spawn error: ${err.message}`);
      } catch {
        // dir gone
      }
    });
    return child;
  }

  /** Runs a command to completion; throws with the log tail if it fails. */
  async run(command: string, args: readonly string[], opts: SpawnOpts & { timeoutMs?: number; label?: string }): Promise<void> {
    const label = opts.label ?? command;
    const child = this.spawn(command, args, opts);
    const spawnError = new Promise<Error>((resolve) => child.once('error', resolve));
    const done = waitExit(child, opts.timeoutMs ?? 60_000);
    const result = await Promise.race([done, spawnError]);
    if (result instanceof Error) throw this.failure(`${label} could not start: ${result.message}`);
    if (!result) {
      this.killGroup(child, 'SIGKILL');
      throw this.failure(`${label} timed out`);
    }
    if (child.exitCode !== 0) {
      throw this.failure(`${label} failed (exit ${child.exitCode ?? child.signalCode})`);
    }
  }

  killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
    if (child.pid !== undefined) signalGroup(child.pid, signal);
  }

  /**
   * Signals `child`'s leader, waits up to `graceMs` for it to exit, then SIGKILLs its whole
   * group. Always leaves the group empty.
   */
  async terminate(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<void> {
    const pid = child.pid;
    if (pid === undefined) return;
    if (!exited(child)) {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
      if (!(await waitExit(child, graceMs))) {
        this.appendLog(`=== ${this.name}: no exit ${graceMs} ms after ${signal}, sending SIGKILL`);
      }
    }
    for (let i = 0; groupAlive(pid); i++) {
      signalGroup(pid, 'SIGKILL');
      if (i > 100) throw new Error(`${this.name}: process group ${pid} survives SIGKILL`);
      await sleep(20);
    }
    this.groups.delete(pid);
    if (!this.disposed) this.writePgids();
  }

  /** Synchronous last resort (process 'exit' handler). */
  signalAll(): void {
    for (const g of this.groups) signalGroup(g, this.emergencySignal);
  }

  /** The last `lines` lines of the log file. */
  tail(lines = 60): string {
    try {
      const text = readFileSync(this.logFile, 'utf8');
      return text.split('\n').slice(-lines).join('\n');
    } catch (err) {
      return `(log unavailable: ${(err as Error).message})`;
    }
  }

  failure(message: string): Error {
    return new Error(`${this.name}: ${message}\n--- tail of ${this.logFile} ---\n${this.tail()}\n---`);
  }

  /** Kills every group still running, stops the watchdog and removes the dir (unless keepDirs). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    for (const g of this.groups) signalGroup(g, 'SIGKILL');
    for (let i = 0; i < 250 && [...this.groups].some(groupAlive); i++) await sleep(20);
    this.disposed = true;
    this.groups.clear();
    live.delete(this);
    if (this.watchdog?.pid !== undefined && !exited(this.watchdog)) {
      try {
        process.kill(this.watchdog.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    if (!keepDirs) await rm(this.dir, { recursive: true, force: true });
  }
}
