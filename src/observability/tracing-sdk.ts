import {
  type Attributes,
  type Link,
  ROOT_CONTEXT,
  type Span,
  SpanKind,
  SpanStatusCode,
  type Tracer,
  defaultTextMapGetter,
  defaultTextMapSetter,
  trace,
} from '@opentelemetry/api';
import { type ExportResult, ExportResultCode, W3CTraceContextPropagator, millisToHrTime } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOnSampler,
  BatchSpanProcessor,
  ParentBasedSampler,
  type ReadableSpan,
  type SpanExporter,
  TracerProvider,
} from '@opentelemetry/sdk-trace';
import type { SinkConfig, TracesConfig } from '../config/config.js';
import type { OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import { VERSION } from '../version.js';
import type { Logger } from './logger.js';
import type { BatchTrace, MessageTracer } from './tracer.js';

/**
 * The OpenTelemetry SDK behind MessageTracer (tracer.ts); imported only when tracing is enabled.
 *
 * The span tree follows the messaging semantic conventions (semconv 1.45, where `publish` became
 * `send`) for a producer that sends in batches:
 * - per message, a `create` span (PRODUCER), child of the row's traceparent (and tracestate). Its
 *   context is what the message carries on, so the consumer's span is its child. It starts at the
 *   transaction's commit time and ends when the broker confirmed the message: its duration is the
 *   relay's whole hop, queueing included;
 * - per batch that holds such messages, a `send` span (CLIENT: its context goes into no message),
 *   from the sink's call to its outcome, linked to each message's `create` span.
 * Sampling follows the row's parent (ParentBased): an unsampled parent gives a span that is not
 * recorded, but its id still goes out, flagged unsampled, as W3C Trace Context asks.
 */

/** The attribute names, in one place. */
const ATTR = {
  /** Superseded by messaging.system.name in semconv 1.45; kept, as tracing backends key on it. */
  system: 'messaging.system',
  systemName: 'messaging.system.name',
  operationType: 'messaging.operation.type',
  operationName: 'messaging.operation.name',
  destination: 'messaging.destination.name',
  partition: 'messaging.destination.partition.id',
  messageId: 'messaging.message.id',
  batchCount: 'messaging.batch.message_count',
  kafkaKey: 'kafka.message.key',
  routingKey: 'rabbitmq.destination.routing_key',
  errorType: 'error.type',
  /** The source position, as the `outboxd.lsn` and `outboxd.xid` headers carry it. */
  lsn: 'outboxd.lsn',
  xid: 'outboxd.xid',
} as const;

const propagator = new W3CTraceContextPropagator();

export class SdkTracer implements MessageTracer {
  private readonly provider: TracerProvider;
  private readonly tracer: Tracer;
  /** The recorded span of each message in flight (by the copy start() returned). */
  private readonly spans = new Map<OutboxMessage, Span>();
  private readonly system: string;
  /** The exchange on RabbitMQ (the routing key is per message); null: the destination is the topic. */
  private readonly exchange: string | null;
  /** The system's own name of a send: AMQP publishes, Kafka produces ("send" in semconv's examples). */
  private readonly sendName: string;

  constructor(
    cfg: TracesConfig,
    sink: SinkConfig,
    private readonly instance: Sink,
    log: Logger,
    exporter?: SpanExporter,
  ) {
    this.system = sink.type;
    this.exchange = sink.type === 'rabbitmq' ? sink.rabbitmq.exchange : null;
    this.sendName = sink.type === 'rabbitmq' ? 'publish' : 'send';
    const out =
      exporter ??
      new OTLPTraceExporter({ url: cfg.endpoint, headers: { ...cfg.headers }, timeoutMillis: cfg.exportTimeoutMs, concurrencyLimit: 4 });
    this.provider = new TracerProvider({
      resource: resourceFromAttributes({ 'service.name': cfg.serviceName, 'service.version': VERSION }),
      sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }),
      spanProcessors: [
        new BatchSpanProcessor({
          exporter: new ReportingExporter(out, cfg.endpoint, log),
          maxQueueSize: cfg.maxQueueSize,
          maxExportBatchSize: Math.min(512, cfg.maxQueueSize),
          scheduledDelayMillis: cfg.batchDelayMs,
          exportTimeoutMillis: cfg.exportTimeoutMs,
        }),
      ],
    });
    this.tracer = this.provider.getTracer('outboxd', VERSION);
  }

  start(m: OutboxMessage): OutboxMessage {
    if (m.headers.traceparent === undefined) return m;
    const parent = propagator.extract(ROOT_CONTEXT, m.headers, defaultTextMapGetter);
    // Not a valid W3C traceparent: the relay has no parent to continue, and passes it on as written.
    if (trace.getSpanContext(parent) === undefined) return m;
    const destination = this.exchange ?? m.destination;
    const attributes: Attributes = {
      [ATTR.system]: this.system,
      [ATTR.systemName]: this.system,
      [ATTR.operationType]: 'create',
      [ATTR.operationName]: 'create',
      [ATTR.destination]: destination,
      [ATTR.messageId]: m.id,
      [ATTR.lsn]: m.txn.lsnText,
      [ATTR.xid]: m.txn.xidText,
    };
    if (this.exchange !== null) attributes[ATTR.routingKey] = m.destination;
    else if (this.system === 'kafka') attributes[ATTR.kafkaKey] = m.key;
    // The commit time comes from the database's clock: never after now, so no span ends before it starts.
    const startTime = millisToHrTime(Math.min(m.txn.commitTimeMs, Date.now()));
    const span = this.tracer.startSpan(`create ${destination}`, { kind: SpanKind.PRODUCER, startTime, attributes }, parent);
    const carrier: Record<string, string> = {};
    propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
    // Only traceparent changes: the row's tracestate goes on as written (the relay adds no entry).
    const traced: OutboxMessage = { ...m, headers: { ...m.headers, traceparent: carrier.traceparent as string } };
    if (span.isRecording()) this.spans.set(traced, span);
    return traced;
  }

  publishing(batch: readonly OutboxMessage[]): BatchTrace | null {
    const links: Link[] = [];
    const destinations = new Set<string>();
    for (const m of batch) {
      const span = this.spans.get(m);
      if (span !== undefined) links.push({ context: span.spanContext() });
      destinations.add(this.exchange ?? m.destination);
    }
    if (links.length === 0) return null;
    const attributes: Attributes = {
      [ATTR.system]: this.system,
      [ATTR.systemName]: this.system,
      [ATTR.operationType]: 'send',
      [ATTR.operationName]: this.sendName,
      [ATTR.batchCount]: batch.length,
    };
    // One destination names the span; a batch over several topics names none (semconv).
    const only = destinations.size === 1 ? (destinations.values().next().value as string) : null;
    if (only !== null) attributes[ATTR.destination] = only;
    const name = only === null ? this.sendName : `${this.sendName} ${only}`;
    const send = this.tracer.startSpan(name, { kind: SpanKind.CLIENT, attributes, links, root: true });
    return {
      confirmed: (outcome) => this.confirmed(batch, outcome, send),
      failed: (error) => {
        send.recordException(error);
        send.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
        send.end();
      },
    };
  }

  private confirmed(batch: readonly OutboxMessage[], outcome: PublishOutcome, send: Span): void {
    const poisoned = new Map(outcome.poisoned.map((p) => [p.index, p.error]));
    const unsent = new Set(outcome.unsent);
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      const span = this.spans.get(m);
      if (span === undefined || unsent.has(i)) continue;
      this.spans.delete(m);
      const error = poisoned.get(i);
      if (error !== undefined) {
        span.setAttribute(ATTR.errorType, error.reason);
        span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
      } else if (this.system === 'kafka') {
        const partition = this.instance.partitionOf?.(m) ?? null;
        if (partition !== null) span.setAttribute(ATTR.partition, String(partition));
      }
      span.end();
    }
    if (poisoned.size > 0) send.setAttribute(ATTR.errorType, 'poisoned_messages');
    send.end();
  }

  async close(): Promise<void> {
    this.spans.clear();
    await this.provider.shutdown();
  }
}

/**
 * The OTLP exporter, with its failures logged: a warning when exports start failing (spans are
 * being lost; messages never are), one line when they work again. Steady state logs nothing.
 */
class ReportingExporter implements SpanExporter {
  private failing = false;

  constructor(
    private readonly inner: SpanExporter,
    private readonly endpoint: string,
    private readonly log: Logger,
  ) {}

  export(spans: ReadableSpan[], done: (result: ExportResult) => void): void {
    this.inner.export(spans, (result) => {
      if (result.code !== ExportResultCode.SUCCESS && !this.failing) {
        this.failing = true;
        this.log.warn(
          { err: result.error, endpoint: this.endpoint, spans: spans.length },
          'exporting trace spans failed; spans are dropped until the endpoint answers (messages are not affected)',
        );
      } else if (result.code === ExportResultCode.SUCCESS && this.failing) {
        this.failing = false;
        this.log.info({ endpoint: this.endpoint }, 'exporting trace spans works again');
      }
      done(result);
    });
  }

  shutdown(): Promise<void> {
    return this.inner.shutdown();
  }

  forceFlush(): Promise<void> {
    return this.inner.forceFlush?.() ?? Promise.resolve();
  }
}
