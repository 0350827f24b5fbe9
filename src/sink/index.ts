import type { SinkConfig } from '../config/schema.js';
import type { Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import { KafkaSink } from './kafka.js';
import { StdoutSink } from './stdout.js';

export function createSink(cfg: SinkConfig, log: Logger, onConnection: (up: boolean) => void): Sink {
  switch (cfg.type) {
    case 'kafka':
      return new KafkaSink(cfg.kafka, log, onConnection);
    case 'stdout':
      return new StdoutSink(cfg.stdout);
  }
}

/** The destination template the mapper renders for this sink. */
export function destinationTemplate(cfg: SinkConfig) {
  return cfg.type === 'kafka' ? cfg.kafka.topic : cfg.stdout.destination;
}
