import type { SpanExporter } from '@opentelemetry/sdk-trace';
import type { SinkConfig, TracesConfig } from '../config/config.js';
import type { Logger } from './logger.js';
import type { TracerFactory } from './tracer.js';

/**
 * Traces through the relay (`telemetry.traces`, docs/tracing.md): a span per message that
 * carries a W3C `traceparent`, child of it, from the transaction's commit to the broker's
 * confirm, whose own traceparent replaces the row's in the outgoing headers; and a span per
 * batch sent, linked to those. This module holds only the loader (the contract is in tracer.ts,
 * which both this and the SDK import): the OpenTelemetry SDK (tracing-sdk.ts) is imported when
 * tracing is enabled and never otherwise, so a relay without tracing neither loads it nor pays
 * more than one branch per message.
 */

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
