import type { Server } from 'node:http';
import type { SpanExporter } from '@opentelemetry/sdk-trace';
import { PublishedUpTo } from './positions/published.js';
import { Watermark } from './positions/watermark.js';
import type { Config } from './config/config.js';
import { ExitCode, OutboxdError, exitCodeFor } from './errors.js';
import type { RelayState, Sink } from './interfaces.js';
import { ZERO_LSN, formatLsn } from './lsn.js';
import { Health } from './observability/health.js';
import { startHttp } from './observability/http.js';
import { Liveness } from './observability/liveness.js';
import type { Logger } from './observability/logger.js';
import { type Metrics, createMetrics } from './observability/metrics.js';
import type { MessageTracer, TracerFactory } from './observability/tracer.js';
import { loadTracing } from './observability/tracing.js';
import { cloudEventsFor } from './outbox/cloudevents.js';
import { OutboxMapper } from './outbox/mapper.js';
import { Ingest } from './pipeline/ingest.js';
import { Pipeline } from './pipeline/pipeline.js';
import { type SinkFactory, connectSink, destinationLabel, destinationTemplate, loadSink } from './sink/index.js';
import { drainInFlight } from './lifecycle/drain.js';
import { Sessions } from './lifecycle/session.js';

/**
 * Wires the components and runs them. Start order: HTTP (so probes answer), the sink (so nothing
 * is read before it can be published), then the source's replication sessions. Stop order is the
 * reverse: stop taking WAL, drain the pipeline, confirm the watermark, close the stream, the
 * sink, HTTP.
 */
export class Relay {
  readonly metrics: Metrics;
  private readonly health: Health;
  private readonly liveness = new Liveness();
  private readonly watermark = new Watermark(ZERO_LSN);
  /** Exactly-once: what the broker holds already. The sink sets it, the ingest asks it (docs/adr/0009). */
  private readonly published = new PublishedUpTo();
  private readonly sink: Sink;
  private readonly pipeline: Pipeline;
  private readonly ingest: Ingest;
  private readonly sessions: Sessions;
  /** Spans for traced messages (telemetry.traces); null when tracing is off. */
  private readonly tracer: MessageTracer | null;
  /** Aborted when the relay stops: ends the sink's connect retries and the source's sessions. */
  private readonly stopping = new AbortController();
  private http: Server | null = null;
  private finished!: (code: number) => void;
  /** Resolves with the process exit code when the relay has stopped. */
  readonly done: Promise<number>;

  /**
   * A relay with the sink the config names (its broker library loaded on demand), and with the
   * OpenTelemetry SDK only when telemetry.traces is enabled. `spanExporter` replaces the OTLP
   * exporter (tests).
   */
  static async create(cfg: Config, log: Logger, options: { metrics?: Metrics; spanExporter?: SpanExporter } = {}): Promise<Relay> {
    const sink = await loadSink(cfg.sink, cfg.postgres.slot, cfg.outbox.onPoison === 'dead-letter', log.child({ module: 'sink' }));
    const tracing = await loadTracing(cfg.telemetry.traces, cfg.sink, log.child({ module: 'tracing' }), { exporter: options.spanExporter });
    return new Relay(cfg, log, { metrics: options.metrics, sink, tracing });
  }

  /**
   * `sink`: a factory for the config's sink (see create()), or a ready sink (benchmarks pass a
   * discarding one). `tracing`: the tracer's factory when tracing is enabled (see create()).
   */
  constructor(
    private readonly cfg: Config,
    private readonly log: Logger,
    options: { metrics?: Metrics; sink: Sink | SinkFactory; tracing?: TracerFactory | null },
  ) {
    this.metrics = options.metrics ?? createMetrics(undefined, { shard: cfg.postgres.shard?.index });
    this.done = new Promise((resolve) => {
      this.finished = resolve;
    });
    const label = destinationLabel(cfg.sink, log.child({ module: 'metrics' }));
    const health = new Health(cfg.sink, this.metrics, this.liveness, label, log.child({ module: 'health' }));
    this.health = health;
    this.sink =
      typeof options.sink === 'function'
        ? options.sink(
            {
              connection: (up) => health.sinkHealth(up),
              blocked: (on) => health.blocked(on),
              transaction: (result) => this.metrics.kafkaTransactions.inc({ result }),
              fenced: () => this.metrics.fenced.set(1),
            },
            this.published,
          )
        : options.sink;
    this.tracer = options.tracing ? options.tracing(this.sink) : null;
    this.pipeline = new Pipeline({
      cfg: cfg.pipeline,
      policy: cfg.outbox.onPoison,
      sink: this.sink,
      watermark: this.watermark,
      events: {
        onHalt: (err) => health.halted(err),
        onFatal: (err) => this.die(err),
        onSinkHealth: (up, err) => health.sinkHealth(up, err),
        onStall: (on, waitedMs) => health.stalled(on, waitedMs),
      },
      metrics: this.metrics,
      log: log.child({ module: 'pipeline' }),
      stallTimeoutMs: cfg.sink.stallTimeoutMs,
      label,
      tracer: this.tracer,
    });
    const mapper = new OutboxMapper(destinationTemplate(cfg.sink), cloudEventsFor(cfg.sink));
    this.ingest = new Ingest(cfg, mapper, this.watermark, this.pipeline, this.metrics, log.child({ module: 'ingest' }), this.published);
    this.sessions = new Sessions(cfg, this.watermark, this.ingest, this.pipeline, this.liveness, this.metrics, log, {
      onState: (s) => health.setState(s),
      onWaiting: (what) => health.waiting(what),
      onHalt: (err) => health.halted(err),
      onStuck: (on, ms, detail) => health.stuck(on, ms, detail),
      resumePoint: this.sink.readCheckpoint && ((session) => (this.sink.readCheckpoint as NonNullable<Sink['readCheckpoint']>)(session)),
    });
    this.metrics.probes.confirmedLsn = () => this.watermark.lsn;
    this.metrics.probes.checkpointLsn = () => this.published.lsnOnThisTimeline;
  }

  get relayState(): RelayState {
    return this.health.state;
  }

  /** The HTTP port actually bound (useful with `http.port: 0`). */
  get httpPort(): number {
    const a = this.http?.address();
    return typeof a === 'object' && a ? a.port : 0;
  }

  /** Starts everything in the background. Resolves once HTTP listens; watch `done` for the end. */
  async start(): Promise<void> {
    const { sink, postgres, http } = this.cfg;
    this.http = await startHttp(http.host, http.port, this.metrics.registry, this.health, this.log.child({ module: 'http' }));
    this.log.info({ port: this.httpPort, sink: sink.type, slot: postgres.slot, publication: postgres.publication }, 'outboxd starting');
    this.pipeline.start();
    const signal = this.stopping.signal;
    const run = async () => {
      await connectSink(this.sink, postgres.reconnect, signal, this.health, this.log);
      await this.sessions.run(signal);
    };
    void run().catch((err: unknown) => {
      if (signal.aborted) return;
      this.die(err instanceof OutboxdError ? err : new OutboxdError('INTERNAL', String(err), { cause: err }));
    });
  }

  private die(err: OutboxdError): void {
    if (this.health.state === 'failed' || this.stopping.signal.aborted) return;
    this.log.fatal({ err }, err.message);
    this.health.failed(err);
    void this.shutdown(exitCodeFor(err), false);
  }

  /**
   * Graceful stop: stop taking WAL, publish what is in flight (up to `shutdown.grace`), confirm
   * the watermark, then close. Messages still unconfirmed at the deadline come again next run.
   */
  async stop(): Promise<number> {
    void this.shutdown(ExitCode.ok, true);
    return this.done;
  }

  private shuttingDown = false;

  private async shutdown(code: number, drain: boolean): Promise<void> {
    if (this.shuttingDown) return;
    this.shuttingDown = true;
    const halted = this.health.state === 'halted' || this.pipeline.haltedBy !== null;
    this.health.setState('stopping');
    this.ingest.paused = true;
    let drained = this.pipeline.idle;
    if (drain && !halted) drained = await drainInFlight(this.pipeline, this.ingest, this.cfg.shutdown.graceMs, this.log);
    else if (halted)
      this.log.info(
        { inFlight: this.pipeline.inFlightMessages },
        'stopping while halted; unconfirmed messages will be read again on the next start',
      );
    // Closing the sink first releases a publish stuck on the broker (blocked, unanswered confirms).
    if (!this.pipeline.idle) await this.sink.close().catch(() => undefined);
    await this.pipeline.stop();
    // Fenced: another relay owns the slot's events now; this one confirms nothing more.
    if (code !== ExitCode.fenced) await this.sessions.flush();
    this.stopping.abort(new Error('outboxd is stopping'));
    await this.sessions.close();
    await this.sink.close().catch(() => undefined);
    // The spans ended so far are exported (within telemetry.traces.exportTimeout); open ones are dropped.
    await this.tracer?.close().catch((err: unknown) => this.log.warn({ err }, 'closing the trace exporter failed'));
    this.liveness.stop();
    await new Promise<void>((resolve) => (this.http ? this.http.close(() => resolve()) : resolve()));
    this.http?.closeAllConnections();
    this.health.setState('stopped');
    this.log.info({ confirmedLsn: formatLsn(this.watermark.lsn), drained }, 'outboxd stopped');
    this.finished(code);
  }
}
