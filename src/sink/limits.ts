import type { Config } from '../config/config.js';

/**
 * The largest message the configured sink can carry, and so the largest column value or logical
 * message worth decoding (pgoutput.ts checks the length prefix against it before it decodes).
 * Never more than the in-flight byte bound: a message larger than that could not be held.
 */
export function maxMessageBytes(cfg: Config): number {
  const sink = cfg.sink;
  const broker =
    sink.type === 'kafka'
      ? sink.kafka.maxMessageBytes
      : sink.type === 'rabbitmq'
        ? sink.rabbitmq.maxMessageBytes
        : Number.POSITIVE_INFINITY;
  return Math.min(broker, cfg.pipeline.maxInFlightBytes);
}
