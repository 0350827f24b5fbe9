import type { SpanExporter } from '@opentelemetry/sdk-trace';
import type { SinkConfig, TracesConfig } from '../config/config.js';
import type { OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Logger } from './logger.js';

/**
 * Traces through the relay (`telemetry.traces`, docs/tracing.md): a span per message that
 * carries a W3C `traceparent`, child of it, from the transaction's commit to the broker's
 * confirm, whose own traceparent replaces the row's in the outgoing headers; and a span per
 * batch sent, linked to those. This module holds only the contract and the loader: the
 * OpenTelemetry SDK (tracing-sdk.ts) is imported when tracing is enabled and never otherwise,
 * so a relay without tracing neither loads it nor pays more than one branch per message.
 */
export interface MessageTracer {
  /**
   * Called once per message as the pipeline accepts it, before any sink encodes it. A message
   * whose `traceparent` header is valid gets its span (started at its commit time) and comes back
   * as a copy whose `traceparent` is the span's (sampled or not, per W3C); any other message
   * comes back as it is, headers untouched.
   */
  start(message: OutboxMessage): OutboxMessage;
  /**
   * A batch goes to the sink. Returns where to report how it went, or null when no message of it
   * has a recorded span (then nothing is traced for it).
   */
  publishing(batch: readonly OutboxMessage[]): BatchTrace | null;
  /** Exports the finished spans (within the export timeout) and stops. Spans still open are dropped. */
  close(): Promise<void>;
}

/** One batch's trace, from the sink's call to its outcome. */
export interface BatchTrace {
  /**
   * The sink resolved: ends the span of every confirmed message (and of every poisoned one, with
   * its error) and the batch's span. A message listed as unsent keeps its span open.
   */
  confirmed(outcome: PublishOutcome): void;
  /** The publish failed for good: ends the batch's span with the error. */
  failed(error: Error): void;
}

/** Builds the tracer once the sink exists (the tracer asks it for Kafka partitions). */
export type TracerFactory = (sink: Sink) => MessageTracer;

/**
 * Loads the OpenTelemetry SDK when `cfg.enabled`, and returns the factory of the tracer; null
 * (nothing loaded) otherwise. `exporter` replaces the OTLP exporter (tests: the in-memory one).
 */
export async function loadTracing(
  cfg: TracesConfig,
  sink: SinkConfig,
  log: Logger,
  options: { exporter?: SpanExporter } = {},
): Promise<TracerFactory | null> {
  if (!cfg.enabled) return null;
  const { SdkTracer } = await import('./tracing-sdk.js');
  return (instance) => new SdkTracer(cfg, sink, instance, log, options.exporter);
}
