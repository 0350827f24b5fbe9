import type { SinkConfig } from '../config/schema.js';
import type { Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import { KafkaSink } from './kafka.js';
import { RabbitMqSink } from './rabbitmq.js';
import { StdoutSink } from './stdout.js';

/** How a sink reports its broker's health to the relay (metrics and `/readyz`). */
export interface SinkStatus {
  connection(up: boolean): void;
  /** The broker asked us to stop publishing (RabbitMQ resource alarm). */
  blocked(blocked: boolean): void;
}

export function createSink(cfg: SinkConfig, needDeadLetter: boolean, log: Logger, status: SinkStatus): Sink {
  switch (cfg.type) {
    case 'kafka':
      return new KafkaSink(cfg.kafka, log, (up) => status.connection(up));
    case 'rabbitmq':
      return new RabbitMqSink(cfg.rabbitmq, needDeadLetter, log, status);
    case 'stdout':
      return new StdoutSink(cfg.stdout);
  }
}

/** The destination template the mapper renders for this sink. */
export function destinationTemplate(cfg: SinkConfig) {
  switch (cfg.type) {
    case 'kafka':
      return cfg.kafka.topic;
    case 'rabbitmq':
      return cfg.rabbitmq.routingKey;
    case 'stdout':
      return cfg.stdout.destination;
  }
}
