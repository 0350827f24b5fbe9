import type { SinkConfig } from '../config/config.js';
import { type ErrorCode, MissingDestinationError, type OutboxdError, PoisonError, SinkError } from '../errors.js';
import type { RelayState } from '../interfaces.js';
import type { Liveness } from './liveness.js';
import type { Logger } from './logger.js';
import { type Metrics, setOneHot } from './metrics.js';

const STATES: readonly RelayState[] = ['starting', 'standby', 'streaming', 'reconnecting', 'halted', 'stopping', 'stopped', 'failed'];

/**
 * The relay's health as `/livez`, `/readyz` and the state metrics report it: the lifecycle state
 * and the sink's condition, each fed by the component that knows it. Ready means streaming from
 * the slot with a sink that is up, not blocked by the broker and not stalled.
 *
 * The probe bodies are for anyone who can reach the port: they carry no row data (ids, keys,
 * header names, payload bytes, a topic or routing key rendered from a row). An error from the
 * data path is named by its reason, with where to read the rest: the log and the metrics.
 */
export class Health {
  private current: RelayState = 'starting';
  private sinkUp = false;
  private sinkError: SinkError | null = null;
  /** Where sinkError came from: a connect error names only configured things and is shown whole. */
  private sinkErrorDuring: 'connect' | 'publish' = 'connect';
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

  /**
   * The sink connected or published (up), or failed to (down, with why). `during`: an error
   * while connecting names only what the config holds (brokers, vhost, credentials) and shows
   * whole; one while publishing may quote row data and shows by its reason.
   */
  sinkHealth(up: boolean, error?: SinkError, during: 'connect' | 'publish' = 'publish'): void {
    this.sinkUp = up;
    if (error !== undefined) this.sinkErrorDuring = during;
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
    if (this.current === 'failed') return { ok: false, detail: `failed: ${this.fatal ? this.errorText(this.fatal) : ''}` };
    const l = this.liveness.check();
    return { ok: l.ok, detail: l.detail ?? this.current };
  }

  ready(): { ok: boolean; detail: string } {
    const sink = this.sink.type;
    if (this.current === 'halted') return { ok: false, detail: `halted: ${this.haltedBy ? probeText(this.haltedBy) : ''}` };
    const unavailable = this.sinkError ? `${sink} unavailable: ${this.errorText(this.sinkError)}` : `${sink} unavailable`;
    if (this.current !== 'streaming') {
      const waiting = this.waitingFor ?? (this.current === 'starting' && this.sinkError ? unavailable : null);
      return { ok: false, detail: waiting ? `${this.current}: ${waiting}` : this.current };
    }
    if (!this.sinkUp) return { ok: false, detail: unavailable };
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

  /** An error as the bodies show it: see probeText; the sink's last connect error shows whole. */
  private errorText(err: OutboxdError): string {
    if (err instanceof MissingDestinationError) {
      const n = err.destinations.length;
      return `${n} destination${n === 1 ? '' : 's'} that do${n === 1 ? 'es' : ''} not exist and ${n === 1 ? 'is' : 'are'} not created (${err.reason}); the log and outboxd_destination_missing name ${n === 1 ? 'it' : 'them'}; publishing waits and retries`;
    }
    return err === this.sinkError && this.sinkErrorDuring === 'connect' ? err.message : probeText(err);
  }
}

/** Errors about the setup, not the data: their messages name only the config, the slot and the servers. */
const SHOWN_WHOLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'CONFIG_INVALID',
  'USAGE',
  'SLOT_LOST',
  'SLOT_INVALIDATED',
  'SLOT_MISSING',
  'SLOT_ACTIVE',
  'PG_NOT_LOGICAL',
  'PG_CONNECTION',
]);

/**
 * An error as a probe body may show it. Errors about the setup show whole. Any other (a poison
 * message, a publish failure, a crash on the data path) may quote row data in its message: the
 * body names its reason and where the message is.
 */
export function probeText(err: OutboxdError): string {
  if (SHOWN_WHOLE.has(err.code)) return err.message;
  if (err instanceof PoisonError) {
    return `a poison message (reason ${err.reason}); the log ("poison message: halting") has its id, key and position, outboxd_poison_messages_total{reason="${err.reason}"} counts it (docs/runbook.md#poison-messages)`;
  }
  if (err instanceof SinkError) {
    return `publishing failed (reason ${err.reason}); the log has the error, outboxd_publish_errors_total counts it`;
  }
  if (err.code === 'RECOVERY_HALTED') {
    return 'lost-slot recovery stopped at a poison row under outbox.onPoison: halt; the log has the row (docs/runbook.md#poison-messages)';
  }
  return `${err.code}: the log has the error`;
}
