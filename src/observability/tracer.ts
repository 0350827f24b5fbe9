import type { OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';

/**
 * The tracing contract (`telemetry.traces`): what the pipeline calls, what tracing-sdk.ts
 * implements and tracing.ts loads. Types only, so that neither of those imports the other.
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
