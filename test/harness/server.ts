/**
 * What the service harnesses (postgres.ts, kafka.ts, rabbitmq.ts) do alike: one main process in
 * a ServiceDir, started and waited for until it is ready (or killed, its log tail in the error),
 * paused, stopped and destroyed with its dir. How each service is started, probed and stopped
 * stays in its own file.
 */
import type { ChildProcess } from 'node:child_process';
import { exited, type ServiceDir, type SpawnOpts } from './proc.js';

/** For until()'s abortReason: why waiting on for the service is pointless, or undefined. */
export type AbortReason = () => string | undefined;

export abstract class ServiceServer implements AsyncDisposable {
  /** The running main process; undefined before start and once it exited or was stopped. */
  protected child: ChildProcess | undefined;

  /** @param processName how the main process is named in errors ("postgres exited (1)") */
  protected constructor(
    protected readonly sd: ServiceDir,
    private readonly processName: string,
  ) {}

  /** Whether the main process runs (start() then has nothing to do). */
  protected get running(): boolean {
    return this.child !== undefined && !exited(this.child);
  }

  /**
   * Spawns the main process and waits for `ready`, which gets an abortReason that reports the
   * process's exit. If it does not get ready, `abandon` ends the process, and the error says why
   * (`explain` may add to that) followed by the tail of the service log.
   */
  protected async launch(
    command: string,
    args: readonly string[],
    opts: SpawnOpts,
    ready: (abortReason: AbortReason) => Promise<void>,
    abandon: (child: ChildProcess) => Promise<void>,
    explain: (message: string) => string = (m) => m,
  ): Promise<void> {
    const child = this.sd.spawn(command, args, opts);
    this.child = child;
    child.once('exit', () => {
      if (this.child === child) this.child = undefined;
    });
    const abortReason: AbortReason = () =>
      exited(child) ? `${this.processName} exited (${child.exitCode ?? child.signalCode})` : undefined;
    try {
      await ready(abortReason);
    } catch (err) {
      await abandon(child);
      throw this.sd.failure(explain((err as Error).message));
    }
  }

  /** Ends the main process with `how`, if it runs; afterwards there is none. */
  protected async halt(how: (child: ChildProcess) => Promise<void>): Promise<void> {
    const child = this.child;
    if (!child) return;
    await how(child);
    this.child = undefined;
  }

  /** SIGSTOPs the service's process group: it stops answering without closing a connection (a hung process). */
  pause(): void {
    if (this.child) this.sd.killGroup(this.child, 'SIGSTOP');
  }

  /** SIGCONTs it. */
  resume(): void {
    if (this.child) this.sd.killGroup(this.child, 'SIGCONT');
  }

  /** Stops everything the service runs, as fast as it can: destroy() throws the data away next. */
  protected abstract stopForGood(): Promise<void>;

  [Symbol.asyncDispose](): Promise<void> {
    return this.destroy();
  }

  /** Stops the service and deletes its dir. */
  async destroy(): Promise<void> {
    await this.stopForGood();
    await this.sd.dispose();
  }
}

/**
 * Prepares and starts a server just made (`init`, then its `start`); if either fails, the server
 * is destroyed (its processes and dir with it) and the error passes on, e.g. to retryOnPortClash.
 */
export async function bringUp<S extends ServiceServer & { start(): Promise<void> }>(server: S, init: () => Promise<void>): Promise<S> {
  try {
    await init();
    await server.start();
    return server;
  } catch (err) {
    await server.destroy().catch(() => undefined);
    throw err;
  }
}
