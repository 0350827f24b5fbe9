import type { PipelineConfig, PoisonPolicy } from '../config/config.js';
import type { OutboxdError, PoisonError, SinkError } from '../errors.js';
import type { Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { MessageTracer } from '../observability/tracer.js';
import type { Watermark } from '../positions/watermark.js';

export interface PipelineEvents {
  /** A poison message under policy `halt`: nothing will advance until an operator acts. */
  onHalt(error: PoisonError): void;
  /** A publish failed for good (not retriable): the relay must stop without confirming. */
  onFatal(error: OutboxdError): void;
  /** The broker's health as the pipeline sees it (false while retrying a failed publish). */
  onSinkHealth(up: boolean, error?: SinkError): void;
  /**
   * A call to the broker has waited longer than `sink.stallTimeout` for its confirm (true), or
   * the confirm came (false). A broker that stops answering without closing the connection (a
   * paused process, a black-holed network) shows here long before the client's own timeout.
   */
  onStall(stalled: boolean, waitedMs: number): void;
}

/** What a pipeline is built from. */
export interface PipelineParts {
  cfg: PipelineConfig;
  /** outbox.onPoison. */
  policy: PoisonPolicy;
  sink: Sink;
  watermark: Watermark;
  events: PipelineEvents;
  metrics: Metrics;
  log: Logger;
  /** How long one call to the sink may wait for the broker before the sink is reported stalled. */
  stallTimeoutMs: number;
  /** The bounded metric label for a destination (default: the destination itself). */
  label?: (destination: string) => string;
  /** Spans for traced messages (telemetry.traces); absent or null when tracing is off. */
  tracer?: MessageTracer | null;
}
