import type { Server } from 'node:http';
import type pg from 'pg';
import { Watermark } from './checkpoint/watermark.js';
import type { Config } from './config/schema.js';
import { ConfigError, ExitCode, MissingDestinationError, OutboxdError, SinkError, SlotError, exitCodeFor } from './errors.js';
import type { RelayState, Sink } from './interfaces.js';
import { type Lsn, ZERO_LSN, formatLsn } from './lsn.js';
import { startHttp } from './observability/http.js';
import type { Logger } from './observability/logger.js';
import { Liveness } from './observability/liveness.js';
import { type Metrics, createMetrics, setOneHot } from './observability/metrics.js';
import { OutboxMapper } from './outbox/mapper.js';
import { Sleeper, backoffMs } from './pipeline/backoff.js';
import { Ingest } from './pipeline/ingest.js';
import { Pipeline } from './pipeline/pipeline.js';
import { type SinkFactory, destinationLabel, destinationTemplate, loadSink } from './sink/index.js';
import {
  checkWalLevel,
  classifyPgError,
  connectAdmin,
  emitHeartbeat,
  ensurePublication,
  ensureSlot,
  slotLag,
  tryLeaderLock,
} from './source/postgres.js';
import { ReplicationStream } from './source/stream.js';

/** SQLSTATE 22021 (invalid byte sequence) / 22P05 (untranslatable character). */
function isEncodingError(e: OutboxdError): boolean {
  const code = (e.cause as { code?: string } | undefined)?.code;
  return code === '22021' || code === '22P05';
}

/** How often a standby retries the leader lock; bounds the takeover time after a leader dies. */
const STANDBY_POLL_MS = 1_000;

const STATES: readonly RelayState[] = ['starting', 'standby', 'streaming', 'reconnecting', 'halted', 'stopping', 'stopped', 'failed'];

/**
 * Wires the components and runs them. Start order: HTTP (so probes answer), sink (so nothing is
 * read before it can be published), then the replication session. Stop order is the reverse:
 * stop reading WAL, drain the pipeline, confirm the watermark, close the stream, the sink, HTTP.
 */
export class Relay {
  readonly metrics: Metrics;
  private state: RelayState = 'starting';
  private readonly watermark = new Watermark(ZERO_LSN);
  private readonly sink: Sink;
  private readonly pipeline: Pipeline;
  private readonly ingest: Ingest;
  private stream: ReplicationStream | null = null;
  private admin: pg.Client | null = null;
  private http: Server | null = null;
  private sinkUp = false;
  private sinkBlocked = false;
  /** Why the sink is down, while it is (the last failed publish), for /readyz. */
  private sinkError: SinkError | null = null;
  private sinkStalledMs: number | null = null;
  /** Topics the broker said do not exist, until a publish succeeds. */
  private missing: readonly string[] = [];
  /** What start-up waits for right now (slot creation), for /readyz. */
  private waitingFor: string | null = null;
  private readonly liveness = new Liveness();
  private readonly label: (destination: string) => string;
  private reopening = false;
  /** A halt raised by the source rather than the pipeline (a row the server cannot send). */
  private haltedBy: OutboxdError | null = null;
  private fatal: OutboxdError | null = null;
  private stopping = false;
  private readonly sleeper = new Sleeper();
  private timers: NodeJS.Timeout[] = [];
  private finished!: (code: number) => void;
  /** Resolves with the process exit code when the relay has stopped. */
  readonly done: Promise<number>;

  /** A relay with the sink the config names (its broker library loaded on demand). */
  static async create(cfg: Config, log: Logger, options: { metrics?: Metrics } = {}): Promise<Relay> {
    const sink = await loadSink(cfg.sink, cfg.outbox.onPoison === 'dead-letter', log.child({ module: 'sink' }));
    return new Relay(cfg, log, { ...options, sink });
  }

  /** `sink`: a factory for the config's sink (see create()), or a ready sink (benchmarks pass a discarding one). */
  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    options: { metrics?: Metrics; sink: Sink | SinkFactory },
  ) {
    this.metrics = options.metrics ?? createMetrics();
    this.label = destinationLabel(cfg.sink, log.child({ module: 'metrics' }));
    this.done = new Promise((resolve) => {
      this.finished = resolve;
    });
    this.sink =
      typeof options.sink === 'function'
        ? options.sink({
            connection: (up) => {
              this.sinkUp = up;
              this.metrics.connectionState.set({ target: cfg.sink.type }, up ? 1 : 0);
            },
            blocked: (blocked) => {
              this.sinkBlocked = blocked;
              this.metrics.brokerBlocked.set(blocked ? 1 : 0);
            },
          })
        : options.sink;
    this.pipeline = new Pipeline(
      cfg.pipeline,
      cfg.outbox.onPoison,
      this.sink,
      this.watermark,
      {
        onAdvance: (lsn) => this.advance(lsn),
        onHalt: () => this.setState('halted'),
        onFatal: (err) => this.die(err),
        onSinkHealth: (up, error) => {
          this.sinkUp = up;
          this.sinkError = up ? null : (error ?? null);
          this.metrics.connectionState.set({ target: cfg.sink.type }, up ? 1 : 0);
          this.setMissing(error instanceof MissingDestinationError ? error.destinations : up ? [] : this.missing);
        },
        onStall: (stalled, waitedMs) => {
          this.sinkStalledMs = stalled ? waitedMs : null;
          this.metrics.sinkStalled.set(stalled ? 1 : 0);
          if (stalled)
            this.log.warn(
              { waitedMs: Math.round(waitedMs) },
              `${cfg.sink.type} stalled: no answer from the broker for ${(waitedMs / 1000).toFixed(1)} s`,
            );
          else this.log.info({ waitedMs: Math.round(waitedMs) }, `${cfg.sink.type} answered again after ${(waitedMs / 1000).toFixed(1)} s`);
        },
      },
      this.metrics,
      log.child({ module: 'pipeline' }),
      cfg.sink.stallTimeoutMs,
      this.label,
    );
    this.ingest = new Ingest(
      cfg,
      new OutboxMapper(destinationTemplate(cfg.sink)),
      this.watermark,
      this.pipeline,
      this.metrics,
      log.child({ module: 'ingest' }),
    );
    this.ingest.onAdvance = (lsn) => this.advance(lsn);
    this.metrics.probes.confirmedLsn = () => this.watermark.lsn;
    this.setState('starting');
  }

  get relayState(): RelayState {
    return this.state;
  }

  /** The HTTP port actually bound (useful with `http.port: 0`). */
  get httpPort(): number {
    const a = this.http?.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  /** Starts everything in the background. Resolves once HTTP listens; watch `done` for the end. */
  async start(): Promise<void> {
    this.http = await startHttp(
      this.cfg.http.host,
      this.cfg.http.port,
      this.metrics.registry,
      this.health(),
      this.log.child({ module: 'http' }),
    );
    this.log.info(
      { port: this.httpPort, sink: this.cfg.sink.type, slot: this.cfg.postgres.slot, publication: this.cfg.postgres.publication },
      'outboxd starting',
    );
    this.pipeline.start();
    void this.main().catch((err: unknown) =>
      this.die(err instanceof OutboxdError ? err : new OutboxdError('INTERNAL', String(err), { cause: err })),
    );
  }

  private health() {
    const sink = this.cfg.sink.type;
    return {
      live: () => {
        if (this.state === 'failed') return { ok: false, detail: `failed: ${this.fatal?.message ?? ''}` };
        const l = this.liveness.check();
        return { ok: l.ok, detail: l.detail ?? this.state };
      },
      ready: () => {
        if (this.state !== 'streaming') {
          const why = this.pipeline.haltedBy?.message ?? this.haltedBy?.message;
          if (this.state === 'halted') return { ok: false, detail: `halted: ${why}` };
          const waiting =
            this.waitingFor ?? (this.state === 'starting' && this.sinkError ? `${sink} unavailable: ${this.sinkError.message}` : null);
          return { ok: false, detail: waiting ? `${this.state}: ${waiting}` : this.state };
        }
        if (!this.sinkUp) return { ok: false, detail: `${sink} unavailable${this.sinkError ? `: ${this.sinkError.message}` : ''}` };
        if (this.sinkBlocked) return { ok: false, detail: `${sink} blocked the connection (resource alarm)` };
        if (this.sinkStalledMs !== null) {
          return {
            ok: false,
            detail: `${sink} stalled: a publish has waited over ${this.cfg.sink.stallTimeoutMs / 1000} s for the broker (sink.stallTimeout)`,
          };
        }
        return { ok: true, detail: 'streaming' };
      },
    };
  }

  /** Sets outboxd_destination_missing for the topics the broker does not know (and clears the rest). */
  private setMissing(topics: readonly string[]): void {
    for (const t of this.missing) if (!topics.includes(t)) this.metrics.destinationMissing.set({ destination: this.label(t) }, 0);
    for (const t of topics) this.metrics.destinationMissing.set({ destination: this.label(t) }, 1);
    this.missing = topics;
  }

  private setState(s: RelayState): void {
    if (this.state === s && s !== 'starting') return;
    if (this.state === 'failed' || (this.state === 'halted' && s !== 'stopping' && s !== 'stopped' && s !== 'failed')) return;
    this.state = s;
    setOneHot(this.metrics.state, 'state', s, STATES);
    this.metrics.leader.set(s === 'streaming' || s === 'halted' ? 1 : 0);
  }

  private async main(): Promise<void> {
    await this.connectSink();
    if (this.stopping) return;
    await this.streamLoop();
  }

  private async connectSink(): Promise<void> {
    for (let attempt = 1; !this.stopping; attempt++) {
      try {
        await this.sink.connect();
        this.sinkUp = true;
        this.sinkError = null;
        this.metrics.connectionState.set({ target: this.cfg.sink.type }, 1);
        return;
      } catch (err) {
        if (err instanceof SinkError && !err.retriable) throw err;
        if (err instanceof SinkError) this.sinkError = err;
        const wait = backoffMs(attempt, this.cfg.postgres.reconnect);
        if (attempt === 1 || attempt % 10 === 0)
          this.log.warn({ err, attempt, retryInMs: wait }, `${this.cfg.sink.type} unavailable, retrying`);
        await this.sleeper.sleep(wait);
      }
    }
  }

  /** One replication session after another, until stopped or a fatal error. */
  private async streamLoop(): Promise<void> {
    let attempt = 0;
    let standbyLogged = false;
    while (!this.stopping && !this.fatal) {
      try {
        this.admin ??= await this.openAdmin();
        // One active relay per slot: the leader holds a session advisory lock on its admin
        // connection. Postgres itself refuses a second consumer of an active slot (55006); the
        // lock keeps standbys quiet and lets one take over as soon as the leader's session ends.
        if (!(await tryLeaderLock(this.admin, this.cfg.postgres.slot))) {
          this.setState('standby');
          if (!standbyLogged) this.log.info({ slot: this.cfg.postgres.slot }, 'another instance leads this slot; waiting as standby');
          standbyLogged = true;
          await this.sleeper.sleep(STANDBY_POLL_MS + Math.random() * 250);
          continue;
        }
        if (standbyLogged) this.log.info({ slot: this.cfg.postgres.slot }, 'took over as leader');
        const admin = this.admin;
        const pgc = this.cfg.postgres;
        // Each step's own timeouts (statement, lock, slot creation) end it well within its bound:
        // only a hang that none of them covers makes /livez fail.
        await this.liveness.step('checking Postgres', 3 * pgc.statementTimeoutMs, async () => {
          await checkWalLevel(admin);
          await ensurePublication(admin, this.cfg);
        });
        const { slot, created } = await this.liveness.step(
          'creating or checking the replication slot',
          pgc.slotCreateTimeoutMs + 3 * pgc.statementTimeoutMs,
          () =>
            ensureSlot(admin, pgc, (blockers, waitedMs) => {
              const oldest = blockers[0];
              this.waitingFor = `creating replication slot ${pgc.slot}: waiting ${Math.round(waitedMs / 1000)} s for ${blockers.length} running transaction(s) to end${oldest ? ` (oldest: pid ${oldest.pid}, ${oldest.ageSeconds} s)` : ''}`;
              this.log.warn({ slot: pgc.slot, waitedMs, blockers }, 'creating the replication slot waits for running transactions to end');
            }).finally(() => {
              this.waitingFor = null;
            }),
        );
        if (created) this.log.info({ slot: slot.name, lsn: formatLsn(slot.confirmedFlushLsn ?? 0n) }, 'created replication slot');
        // The new session re-reads from the slot. Whatever the last session left in flight is
        // published first, so the watermark's bookkeeping can start over cleanly.
        while (!this.pipeline.idle && !this.stopping && !this.fatal && !this.pipeline.haltedBy) await this.pipeline.drain(1_000);
        if (this.stopping || this.fatal || this.pipeline.haltedBy) return;
        const start = slot.confirmedFlushLsn ?? ZERO_LSN;
        this.watermark.reset(start);
        this.ingest.resetSession();
        const stream = new ReplicationStream(
          this.cfg.postgres,
          this.cfg.postgres.publication,
          this.cfg.outbox.messages.enabled || this.cfg.postgres.heartbeatIntervalMs > 0,
          this.ingest,
          this.watermark.lsn,
          this.log.child({ module: 'source' }),
        );
        this.stream = stream;
        await this.liveness.step('starting replication', 2 * pgc.connectTimeoutMs + pgc.statementTimeoutMs, () => stream.start());
        this.metrics.connectionState.set({ target: 'postgres' }, 1);
        if (attempt > 0) this.log.info({ attempts: attempt }, 'replication reconnected');
        this.log.info({ slot: this.cfg.postgres.slot, from: formatLsn(start) }, 'streaming');
        attempt = 0;
        standbyLogged = false;
        this.setState('streaming');
        this.startTimers();
        await stream.ended;
        this.stopTimers();
      } catch (err) {
        this.stopTimers();
        this.metrics.connectionState.set({ target: 'postgres' }, 0);
        // Raw driver errors from admin queries (a server restart) are classified like the stream's.
        const e = classifyPgError(err, 'postgres');
        if (this.stopping) return;
        if (isEncodingError(e)) {
          // The server cannot convert a text value to UTF8 (non-UTF-8 bytes in a SQL_ASCII
          // database): it cannot send the row at all, so it cannot be dead-lettered either.
          // Halt without confirming; a restart would only hit it again.
          this.metrics.poisonMessages.inc({ reason: 'bad_encoding' });
          // The server's CONTEXT names the row's position, which the runbook's skip recipe needs.
          this.log.error(
            { err: e, reason: 'bad_encoding', where: (e.cause as { where?: string } | undefined)?.where },
            'poison message: halting; Postgres cannot send a text value as UTF-8 (see docs/runbook.md#poison-messages)',
          );
          this.setState('halted');
          this.haltedBy = e;
          // Keep heartbeats and the slot metrics going: the operator watches them while halted.
          this.startTimers();
          return;
        }
        if (!e.retriable || e instanceof SlotError || e instanceof ConfigError) {
          this.die(e);
          return;
        }
        attempt++;
        this.metrics.reconnects.inc({ target: 'postgres' });
        const active = (e.cause as { code?: string } | undefined)?.code === '55006';
        const wait = backoffMs(attempt, this.cfg.postgres.reconnect);
        if (active) {
          this.setState('standby');
          if (!standbyLogged) this.log.info({ slot: this.cfg.postgres.slot }, 'slot is held by another instance; waiting as standby');
          standbyLogged = true;
        } else {
          this.setState('reconnecting');
          if (attempt === 1 || attempt % 10 === 0)
            this.log.warn({ err: e, attempt, retryInMs: wait }, 'replication interrupted, reconnecting');
          await this.admin?.end().catch(() => undefined);
          this.admin = null;
        }
        await this.sleeper.sleep(wait);
      } finally {
        this.stream = null;
      }
    }
  }

  /**
   * The admin connection (leader lock, heartbeats, lag). A pg.Client cannot reconnect, so when it
   * ends we drop it; the next use opens a new one and takes the leader lock again.
   */
  private async openAdmin(): Promise<pg.Client> {
    const client = await connectAdmin(this.cfg.postgres);
    client.on('end', () => {
      if (this.admin === client) {
        this.admin = null;
        if (!this.stopping) this.log.warn('admin connection to Postgres closed; reopening on next use');
      }
    });
    return client;
  }

  /** The admin connection for periodic work while streaming, reopened (and re-locked) if it ended. */
  private async adminForTimers(): Promise<pg.Client | null> {
    if (this.admin) return this.admin;
    if (this.reopening || this.stopping) return null;
    this.reopening = true;
    try {
      const client = await this.openAdmin();
      this.admin = client;
      // Postgres refuses a second consumer of our active slot anyway; the lock is for standbys.
      if (!(await tryLeaderLock(client, this.cfg.postgres.slot))) {
        this.log.warn('leader lock is held elsewhere after an admin reconnect; the slot stays ours while the stream lives');
      }
      return client;
    } catch (err) {
      this.log.debug({ err }, 'admin reconnect failed');
      return null;
    } finally {
      this.reopening = false;
    }
  }

  private advance(lsn: Lsn): void {
    this.stream?.confirm(lsn);
  }

  private startTimers(): void {
    const pg = this.cfg.postgres;
    if (pg.heartbeatIntervalMs > 0) {
      this.timers.push(
        setInterval(async () => {
          const admin = await this.adminForTimers();
          if (!admin) return;
          emitHeartbeat(admin, pg.heartbeatPrefix).then(
            () => this.metrics.heartbeats.inc(),
            (err: unknown) => this.log.debug({ err }, 'heartbeat failed'),
          );
        }, pg.heartbeatIntervalMs),
      );
    }
    const poll = async () => {
      const admin = await this.adminForTimers();
      if (!admin) return;
      slotLag(admin, pg.slot).then(
        (lag) => {
          if (!lag) return;
          this.metrics.replicationLag.set(lag.lagBytes);
          this.metrics.retainedWal.set(lag.retainedBytes);
          if (lag.walStatus) setOneHot(this.metrics.slotWalStatus, 'status', lag.walStatus, ['reserved', 'extended', 'unreserved', 'lost']);
        },
        (err: unknown) => this.log.debug({ err }, 'lag poll failed'),
      );
    };
    void poll();
    this.timers.push(setInterval(poll, pg.lagPollIntervalMs));
    for (const t of this.timers) t.unref();
  }

  private stopTimers(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
  }

  private die(err: OutboxdError): void {
    if (this.fatal || this.stopping) return;
    this.fatal = err;
    this.log.fatal({ err }, err.message);
    this.setState('failed');
    void this.shutdown(exitCodeFor(err), false);
  }

  /**
   * Graceful stop: stop taking WAL, publish what is in flight (up to `shutdown.grace`), confirm
   * the watermark, then close. Messages still unconfirmed at the deadline come again next run.
   */
  async stop(): Promise<number> {
    if (!this.stopping) void this.shutdown(ExitCode.ok, true);
    return this.done;
  }

  private async shutdown(code: number, drain: boolean): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    if (this.state !== 'failed') this.setState('stopping');
    this.ingest.paused = true;
    this.sleeper.wakeAll();
    let drained = true;
    const halted = this.pipeline.haltedBy !== null || this.haltedBy !== null;
    if (drain && this.state !== 'failed' && !halted) {
      // Finish the transaction in progress too: its published messages are then confirmed, and
      // a clean stop leaves nothing to publish twice.
      const deadline = Date.now() + this.cfg.shutdown.graceMs;
      do {
        drained = await this.pipeline.drain(Math.max(0, deadline - Date.now()));
        if (drained && !this.ingest.inTransaction) break;
        if (this.pipeline.haltedBy) break;
        await new Promise((r) => setTimeout(r, 10));
      } while (Date.now() < deadline && this.stream !== null);
      drained = drained && !this.ingest.inTransaction;
      if (!drained)
        this.log.warn(
          { inFlight: this.pipeline.inFlightMessages },
          'shutdown grace expired with messages in flight; they will be published again on the next start',
        );
    } else if (halted) {
      drained = this.pipeline.idle;
      this.log.info(
        { inFlight: this.pipeline.inFlightMessages },
        'stopping while halted; unconfirmed messages will be read again on the next start',
      );
    }
    // Closing the sink first releases a publish stuck on the broker (blocked, unanswered confirms).
    if (!this.pipeline.idle) await this.sink.close().catch(() => undefined);
    await this.pipeline.stop();
    const stream = this.stream;
    if (stream) {
      stream.flushConfirm();
      await this.waitConfirmed(this.watermark.lsn);
      await stream.stop();
    }
    this.stopTimers();
    this.liveness.stop();
    await this.sink.close().catch(() => undefined);
    await this.admin?.end().catch(() => undefined);
    await new Promise<void>((resolve) => (this.http ? this.http.close(() => resolve()) : resolve()));
    this.http?.closeAllConnections();
    if (this.state !== 'failed') this.setState('stopped');
    this.log.info({ confirmedLsn: formatLsn(this.watermark.lsn), drained }, 'outboxd stopped');
    this.finished(code);
  }

  /** Waits (briefly) until the server reports the slot confirmed at `lsn`, so a clean stop is visible. */
  private async waitConfirmed(lsn: Lsn): Promise<void> {
    if (!this.admin || lsn === ZERO_LSN) return;
    const deadline = Date.now() + 2_000;
    while (Date.now() < deadline) {
      const lag = await slotLag(this.admin, this.cfg.postgres.slot).catch(() => null);
      if (!lag?.confirmedFlushLsn || lag.confirmedFlushLsn >= lsn) return;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
