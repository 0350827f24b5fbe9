/**
 * What `/livez` answers: is the process stuck in itself? Two things say so:
 * - an event loop that stops turning: a timer ticks every second, and a tick later than
 *   `loopStallMs` means the loop was blocked that long. The probe fails while the loop is late and
 *   for `loopStallMs` after such a block, so a probe answered right after it, or a loop that
 *   blocks again and again, is caught;
 * - a step that waits past its bound: each start-up step (and anything else that must finish)
 *   runs under `step()`, whose bound is longer than every timeout inside it. Only a hang that no
 *   timeout covers, a bug, outlives it.
 * A dependency that is down is never a liveness failure: its steps time out and retry within
 * their bounds, and `/readyz` reports it. Restarting the pod would not bring a broker back.
 */
export class Liveness {
  private readonly steps = new Map<number, { name: string; startedMs: number; boundMs: number }>();
  private nextId = 0;
  private lastTickMs: number;
  private worstLagMs = 0;
  private lastBlock: { endMs: number; lagMs: number } | null = null;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly loopStallMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {
    this.lastTickMs = now();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  private tick(): void {
    const t = this.now();
    const lag = t - this.lastTickMs - TICK_MS;
    if (lag > this.worstLagMs) this.worstLagMs = lag;
    if (lag > this.loopStallMs) this.lastBlock = { endMs: t, lagMs: lag };
    this.lastTickMs = t;
  }

  /** Runs `fn` as a named step that must finish within `boundMs`. */
  async step<T>(name: string, boundMs: number, fn: () => Promise<T>): Promise<T> {
    const id = this.nextId++;
    this.steps.set(id, { name, startedMs: this.now(), boundMs });
    try {
      return await fn();
    } finally {
      this.steps.delete(id);
    }
  }

  /** Not ok when the loop has not turned for `loopStallMs`, or a step is past its bound. */
  check(): { ok: boolean; detail: string | null } {
    const t = this.now();
    const sinceTick = t - this.lastTickMs;
    if (sinceTick > this.loopStallMs + TICK_MS) {
      return { ok: false, detail: `the event loop has not turned for ${Math.round(sinceTick / 1000)} s` };
    }
    if (this.lastBlock !== null && t - this.lastBlock.endMs < this.loopStallMs) {
      return { ok: false, detail: `the event loop was blocked for ${Math.round(this.lastBlock.lagMs / 1000)} s` };
    }
    for (const s of this.steps.values()) {
      const waited = t - s.startedMs;
      if (waited > s.boundMs) {
        return {
          ok: false,
          detail: `stuck: ${s.name} has run for ${Math.round(waited / 1000)} s (bound ${Math.round(s.boundMs / 1000)} s)`,
        };
      }
    }
    return { ok: true, detail: null };
  }

  /** The longest the event loop was late since the last call, in ms (for a metric). */
  takeWorstLagMs(): number {
    const w = this.worstLagMs;
    this.worstLagMs = 0;
    return w;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

const TICK_MS = 1_000;
