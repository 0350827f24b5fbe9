import type { BackoffConfig, SinkConfig } from '../config/config.js';
import { SinkError } from '../errors.js';
import type { Health } from '../observability/health.js';
import { retry, worthLogging } from '../retry.js';
import { PublishedUpTo } from '../positions/published.js';
import type { Sink } from '../interfaces.js';
import { LabelLimiter, MAX_DESTINATION_LABELS, OTHER } from '../observability/labels.js';
import type { Logger } from '../observability/logger.js';
import type { SinkStatus } from './status.js';

export type { SinkStatus } from './status.js';

/**
 * Builds the configured sink once its owner can receive its status. `published` is the relay's
 * one holder of the exactly-once position: the exactly-once sink keeps it, the ingest reads it.
 * A command that only connects the sink (doctor) passes none.
 */
export type SinkFactory = (status: SinkStatus, published?: PublishedUpTo) => Sink;

/**
 * Loads the configured sink's module, and with it only that broker's client library: kafkajs and
 * amqplib take about 30 ms to load, which every start (and `validate`, `status`) would pay.
 */
export async function loadSink(cfg: SinkConfig, slot: string, needDeadLetter: boolean, log: Logger): Promise<SinkFactory> {
  switch (cfg.type) {
    case 'kafka': {
      // kafkajs's internals behind one door, checked and installed before any Kafka module
      // builds a client: a kafkajs other than the one it was written for stops the relay here.
      const { installKafkajs } = await import('./kafka/kafkajs-internals.js');
      installKafkajs();
      // The codec's library loads (and round-trips) now: a missing native binary stops the relay at start.
      const { checkCodec } = await import('./kafka/codecs.js');
      checkCodec(cfg.kafka.compression);
      if (cfg.kafka.delivery === 'exactly-once') {
        // One transactional producer, on the main thread: a batch and its checkpoint commit
        // together only from one producer (docs/adr/0009, 0010).
        if (cfg.kafka.workers > 0)
          log.info(
            { workers: cfg.kafka.workers },
            'exactly-once publishes on the main thread; sink.kafka.workers applies to at-least-once',
          );
        const { KafkaExactlyOnceSink } = await import('./kafka/exactly-once.js');
        return (status, published = new PublishedUpTo()) =>
          new KafkaExactlyOnceSink(cfg.kafka, slot, published, log, (up) => status.connection(up), status);
      }
      if (cfg.kafka.workers > 0) {
        const { KafkaWorkerSink } = await import('./kafka/workers.js');
        return (status) => new KafkaWorkerSink(cfg.kafka, cfg.kafka.workers, log, (up) => status.connection(up));
      }
      const { KafkaSink } = await import('./kafka/at-least-once.js');
      return (status) => new KafkaSink(cfg.kafka, log, (up) => status.connection(up));
    }
    case 'rabbitmq': {
      const { RabbitMqSink } = await import('./rabbitmq/sink.js');
      return (status) => new RabbitMqSink(cfg.rabbitmq, needDeadLetter, log, status);
    }
    case 'stdout': {
      const { StdoutSink } = await import('./stdout.js');
      return () => new StdoutSink(cfg.stdout);
    }
  }
}

/**
 * The `destination` label of the per-destination metrics. On RabbitMQ it names the exchange: the
 * routing key is row data (with x-consistent-hash it is the aggregate id). Elsewhere it is the
 * topic or destination, bounded by a LabelLimiter.
 */
export function destinationLabel(cfg: SinkConfig, log: Logger): (destination: string) => string {
  if (cfg.type === 'rabbitmq') {
    const exchange = cfg.rabbitmq.exchange;
    return () => exchange;
  }
  const limiter = new LabelLimiter(MAX_DESTINATION_LABELS, (first, max) =>
    log.warn(
      { destination: first, max },
      `more than ${max} distinct destinations: the destination label of outboxd_messages_*_total counts the rest as "${OTHER}"`,
    ),
  );
  return (d) => limiter.label(d);
}

/**
 * Connects the sink at start-up, retrying with backoff until the broker answers: nothing is read
 * from Postgres before it can be published. Rejects on an error retrying cannot fix.
 */
export async function connectSink(sink: Sink, backoff: BackoffConfig, signal: AbortSignal, health: Health, log: Logger): Promise<void> {
  try {
    await retry(() => sink.connect(), {
      backoff,
      signal,
      isRetriable: (err) => !(err instanceof SinkError) || err.retriable,
      onRetry: (err, attempt, waitMs) => {
        if (err instanceof SinkError) health.sinkHealth(false, err, 'connect');
        if (worthLogging(attempt)) log.warn({ err, attempt, retryInMs: waitMs }, `${sink.type} unavailable, retrying`);
      },
    });
  } catch (err) {
    // The error the relay stops with: /livez shows it whole, as a connect error.
    if (err instanceof SinkError) health.sinkHealth(false, err, 'connect');
    throw err;
  }
  health.sinkHealth(true);
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
