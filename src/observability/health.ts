import type { SinkConfig } from '../config/config.js';
import { MissingDestinationError, type OutboxdError, type SinkError } from '../errors.js';
import type { RelayState } from '../interfaces.js';
import type { Liveness } from './liveness.js';
import type { Logger } from './logger.js';
import { type Metrics, setOneHot } from './metrics.js';

const STATES: readonly RelayState[] = ['starting', 'standby', 'streaming', 'reconnecting', 'halted', 'stopping', 'stopped', 'failed'];

/**
 * The relay's health as `/livez`, `/readyz` and the state metrics report it: the lifecycle state
 * and the sink's condition, each fed by the component that knows it. Ready means streaming from
 * the slot with a sink that is up, not blocked by the broker and not stalled.
 */
export class Health {
  private current: RelayState = 'starting';
  private sinkUp = false;
  private sinkError: SinkError | null = null;
  private sinkBlocked = false;
  private stalledMs: number | null = null;
  private stuckDetail: string | null = null;
  private waitingFor: string | null = null;
  private haltedBy: OutboxdError | null = null;
  private fatal: OutboxdError | null = null;
  private missing: readonly string[] = [];

  constructor(
    private readonly sink: SinkConfig,
    private readonly metrics: Metrics,
    private readonly liveness: Liveness,
    private readonly label: (destination: string) => string,
    private readonly log: Logger,
  ) {
    setOneHot(metrics.state, 'state', 'starting', STATES);
  }

  get state(): RelayState {
    return this.current;
  }

  /**
   * Moves to `s`. `failed` is final, and `halted` gives way only to stopping, stopped or failed:
   * a halted relay stays halted until an operator acts.
   */
  setState(s: RelayState): void {
    if (this.current === s || this.current === 'failed') return;
    if (this.current === 'halted' && s !== 'stopping' && s !== 'stopped' && s !== 'failed') return;
    this.current = s;
    setOneHot(this.metrics.state, 'state', s, STATES);
    this.metrics.leader.set(s === 'streaming' || s === 'halted' ? 1 : 0);
  }

  halted(error: OutboxdError): void {
    this.haltedBy ??= error;
    this.setState('halted');
  }

  failed(error: OutboxdError): void {
    this.fatal ??= error;
    this.setState('failed');
  }

  /** The sink connected or published (up), or failed to (down, with why). */
  sinkHealth(up: boolean, error?: SinkError): void {
    this.sinkUp = up;
    this.sinkError = up ? null : (error ?? this.sinkError);
    this.metrics.connectionState.set({ target: this.sink.type }, up ? 1 : 0);
    const missing = error instanceof MissingDestinationError ? error.destinations : up ? [] : this.missing;
    for (const t of this.missing) if (!missing.includes(t)) this.metrics.destinationMissing.set({ destination: this.label(t) }, 0);
    for (const t of missing) this.metrics.destinationMissing.set({ destination: this.label(t) }, 1);
    this.missing = missing;
  }

  /** The broker asked us to stop publishing (RabbitMQ resource alarm), or lifted that. */
  blocked(on: boolean): void {
    this.sinkBlocked = on;
    this.metrics.brokerBlocked.set(on ? 1 : 0);
  }

  /** A call to the broker has waited past sink.stallTimeout (true), or answered (false). */
  stalled(on: boolean, waitedMs: number): void {
    this.stalledMs = on ? waitedMs : null;
    this.metrics.sinkStalled.set(on ? 1 : 0);
    const s = (waitedMs / 1000).toFixed(1);
    if (on) this.log.warn({ waitedMs: Math.round(waitedMs) }, `${this.sink.type} stalled: no answer from the broker for ${s} s`);
    else this.log.info({ waitedMs: Math.round(waitedMs) }, `${this.sink.type} answered again after ${s} s`);
  }

  /** The progress watchdog: the confirmed position stands still while WAL is ahead (true), or moves again. */
  stuck(on: boolean, unchangedMs: number, detail: string): void {
    const was = this.stuckDetail !== null;
    this.stuckDetail = on ? detail : null;
    this.metrics.stuck.set(on ? 1 : 0);
    if (on && !was) this.log.warn({ unchangedMs }, `no progress: ${detail}`);
    if (!on && was) this.log.info({ unchangedMs }, "progress again: the slot's confirmed position moves");
  }

  /** What start-up waits for (shown while starting), or null. */
  waiting(what: string | null): void {
    this.waitingFor = what;
  }

  live(): { ok: boolean; detail: string } {
    if (this.current === 'failed') return { ok: false, detail: `failed: ${this.fatal?.message ?? ''}` };
    const l = this.liveness.check();
    return { ok: l.ok, detail: l.detail ?? this.current };
  }

  ready(): { ok: boolean; detail: string } {
    const sink = this.sink.type;
    if (this.current === 'halted') return { ok: false, detail: `halted: ${this.haltedBy?.message ?? ''}` };
    if (this.current !== 'streaming') {
      const waiting =
        this.waitingFor ?? (this.current === 'starting' && this.sinkError ? `${sink} unavailable: ${this.sinkError.message}` : null);
      return { ok: false, detail: waiting ? `${this.current}: ${waiting}` : this.current };
    }
    if (!this.sinkUp) return { ok: false, detail: `${sink} unavailable${this.sinkError ? `: ${this.sinkError.message}` : ''}` };
    if (this.sinkBlocked) return { ok: false, detail: `${sink} blocked the connection (resource alarm)` };
    if (this.stalledMs !== null) {
      return {
        ok: false,
        detail: `${sink} stalled: a publish has waited over ${this.sink.stallTimeoutMs / 1000} s for the broker (sink.stallTimeout)`,
      };
    }
    if (this.stuckDetail !== null) return { ok: false, detail: `no progress: ${this.stuckDetail}` };
    return { ok: true, detail: 'streaming' };
  }
}
