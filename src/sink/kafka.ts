import kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../config/schema.js';
import { PoisonError, SinkError } from '../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import { deadLetterBody, deadLetterHeaders } from './dead-letter.js';

const { Kafka, CompressionTypes, Partitioners, logLevel } = kafkajs;
type Producer = kafkajs.Producer;
type Message = kafkajs.Message;

/** Broker answers that concern one message, not the connection: isolate and treat as poison. */
const MESSAGE_ERRORS = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'CORRUPT_MESSAGE',
  'INVALID_TOPIC_EXCEPTION',
]);
/** Answers that retrying will not fix: stop the relay without confirming. */
const FATAL_ERRORS = new Set([
  'TOPIC_AUTHORIZATION_FAILED',
  'CLUSTER_AUTHORIZATION_FAILED',
  'TRANSACTIONAL_ID_AUTHORIZATION_FAILED',
  'SASL_AUTHENTICATION_FAILED',
  'UNSUPPORTED_SASL_MECHANISM',
  'ILLEGAL_SASL_STATE',
  'UNSUPPORTED_VERSION',
  'UNSUPPORTED_FOR_MESSAGE_FORMAT',
  'POLICY_VIOLATION',
]);
/**
 * Messages per send. kafkajs groups a send's messages by partition by copying the partition's
 * array once per message (groupMessagesPerPartition), so its garbage grows with the square of
 * the messages per send: 2,000 messages over 3 partitions allocate about 5 MB of arrays. Sends
 * of at most this many keep that small; on a local broker they cost no throughput (bench).
 */
const SEND_MAX_MESSAGES = 500;
/** Per-record overhead of the v2 record format, a conservative bound. */
const RECORD_OVERHEAD_BYTES = 128;
const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;

/**
 * Kafka through kafkajs: an idempotent producer with acks=all and one request in flight, so
 * per-partition order survives the client's internal retries. kafkajs's default partitioner is
 * Java-compatible murmur2, so a key lands on the same partition as from a Java producer.
 *
 * A batch is sent as sequential chunks no larger than `maxMessageBytes`, because kafkajs puts
 * all of a partition's messages of one send into one record batch, and the broker rejects a
 * record batch larger than its `message.max.bytes`; and of at most SEND_MAX_MESSAGES messages.
 */
export class KafkaSink implements Sink {
  readonly type = 'kafka' as const;
  private readonly kafka: kafkajs.Kafka;
  private producer: Producer | null = null;
  private readonly chunkBytes: number;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
  ) {
    const kLog = log.child({ module: 'kafkajs' });
    this.kafka = new Kafka({
      clientId: cfg.clientId,
      brokers: cfg.brokers,
      connectionTimeout: cfg.connectionTimeoutMs,
      requestTimeout: cfg.requestTimeoutMs,
      ssl: cfg.ssl
        ? {
            ca: cfg.ssl.ca,
            cert: cfg.ssl.cert,
            key: cfg.ssl.key,
            rejectUnauthorized: cfg.ssl.rejectUnauthorized,
            servername: cfg.ssl.servername,
          }
        : false,
      sasl: cfg.sasl
        ? ({ mechanism: cfg.sasl.mechanism, username: cfg.sasl.username, password: cfg.sasl.password } as kafkajs.SASLOptions)
        : undefined,
      // Few internal retries: the pipeline retries whole batches with its own backoff and metrics.
      retry: { retries: 3, initialRetryTime: 200, maxRetryTime: 5_000 },
      // kafkajs is chatty during outages; the pipeline logs failures itself, rate-limited.
      logLevel: logLevel.ERROR,
      logCreator:
        () =>
        ({ level, log: entry }) => {
          const { message, ...rest } = entry;
          if (level <= logLevel.ERROR) kLog.debug(rest, message);
        },
    });
    this.chunkBytes = Math.max(1024, Math.floor(cfg.maxMessageBytes * 0.9));
  }

  async connect(): Promise<void> {
    await this.getProducer();
    this.onConnection(true);
  }

  private async getProducer(): Promise<Producer> {
    if (this.producer) return this.producer;
    const producer = this.kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: true,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    try {
      await producer.connect();
    } catch (err) {
      this.onConnection(false);
      await producer.disconnect().catch(() => undefined);
      throw classify(err, 'connecting to Kafka');
    }
    producer.on(producer.events.DISCONNECT, () => this.onConnection(false));
    this.producer = producer;
    return producer;
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    const poisoned: Array<{ index: number; error: PoisonError }> = [];
    const producer = await this.getProducer();
    let chunk: Array<{ index: number; m: OutboxMessage }> = [];
    let chunkSize = 0;
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      const bad = this.precheck(m);
      if (bad) {
        poisoned.push({ index: i, error: bad });
        continue;
      }
      const size = m.sizeBytes + RECORD_OVERHEAD_BYTES;
      if (chunk.length > 0 && (chunkSize + size > this.chunkBytes || chunk.length >= SEND_MAX_MESSAGES)) {
        await this.sendChunk(producer, chunk, poisoned);
        chunk = [];
        chunkSize = 0;
      }
      chunk.push({ index: i, m });
      chunkSize += size;
    }
    if (chunk.length > 0) await this.sendChunk(producer, chunk, poisoned);
    this.onConnection(true);
    return { poisoned };
  }

  /** Problems we can see before sending: a bad topic name or a message above the size limit. */
  private precheck(m: OutboxMessage): PoisonError | null {
    if (!TOPIC_NAME.test(m.destination)) {
      return new PoisonError('unroutable', `topic "${m.destination.slice(0, 100)}" is not a legal Kafka topic name`);
    }
    if (m.sizeBytes + RECORD_OVERHEAD_BYTES > this.cfg.maxMessageBytes) {
      return new PoisonError(
        'oversized',
        `message of ${m.sizeBytes} bytes exceeds sink.kafka.maxMessageBytes (${this.cfg.maxMessageBytes})`,
      );
    }
    return null;
  }

  private async sendChunk(
    producer: Producer,
    chunk: Array<{ index: number; m: OutboxMessage }>,
    poisoned: Array<{ index: number; error: PoisonError }>,
  ): Promise<void> {
    try {
      await this.send(
        producer,
        chunk.map((c) => c.m),
      );
    } catch (err) {
      const type = protocolErrorType(err);
      if (type === undefined || !MESSAGE_ERRORS.has(type)) throw classify(err, 'publishing to Kafka');
      // The broker refused something in the chunk: find which messages, one at a time, in order.
      for (const { index, m } of chunk) {
        try {
          await this.send(producer, [m]);
        } catch (one) {
          const t = protocolErrorType(one);
          if (t === undefined || !MESSAGE_ERRORS.has(t)) throw classify(one, 'publishing to Kafka');
          poisoned.push({
            index,
            error: new PoisonError(t === 'INVALID_TOPIC_EXCEPTION' ? 'unroutable' : 'rejected', `Kafka refused message: ${t}`, one),
          });
        }
      }
    }
  }

  private async send(producer: Producer, messages: readonly OutboxMessage[]): Promise<void> {
    const byTopic = new Map<string, Message[]>();
    for (const m of messages) {
      let list = byTopic.get(m.destination);
      if (!list) {
        list = [];
        byTopic.set(m.destination, list);
      }
      list.push({ key: m.key, value: m.payload, headers: m.headers as Record<string, string> });
    }
    await producer.sendBatch({
      acks: -1,
      compression: this.cfg.compression === 'gzip' ? CompressionTypes.GZIP : CompressionTypes.None,
      topicMessages: [...byTopic].map(([topic, msgs]) => ({ topic, messages: msgs })),
    });
  }

  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    const producer = await this.getProducer();
    const headers = deadLetterHeaders(letter);
    const value = deadLetterBody(letter, Math.floor(this.cfg.maxMessageBytes / 2), headers);
    try {
      await producer.sendBatch({
        acks: -1,
        topicMessages: [{ topic: this.cfg.deadLetterTopic, messages: [{ key: letter.key, value, headers }] }],
      });
    } catch (err) {
      throw classify(err, `publishing to dead-letter topic ${this.cfg.deadLetterTopic}`);
    }
  }

  /**
   * After a failed send the idempotent producer's sequence state may be stale (a broker lost a
   * batch, or the producer id expired); a fresh producer gets a new id and starts clean.
   */
  async reset(): Promise<void> {
    const p = this.producer;
    this.producer = null;
    if (p) await p.disconnect().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.reset();
  }
}

function protocolErrorType(err: unknown): string | undefined {
  for (let e = err as { type?: unknown; cause?: unknown; errors?: unknown } | undefined, depth = 0; e && depth < 6; depth++) {
    if (typeof e.type === 'string') return e.type;
    e = e.cause as typeof e;
  }
  return undefined;
}

/** kafkajs error → SinkError. Retriable unless the broker said something retrying cannot fix. */
function classify(err: unknown, doing: string): SinkError {
  if (err instanceof SinkError) return err;
  const type = protocolErrorType(err);
  const name = (err as Error)?.name ?? 'Error';
  const message = `${doing}: ${(err as Error)?.message ?? String(err)}${type && !(err as Error)?.message?.includes(type) ? ` (${type})` : ''}`;
  const fatal = (type !== undefined && FATAL_ERRORS.has(type)) || name === 'KafkaJSSASLAuthenticationError';
  return new SinkError(type ?? name.replace(/^KafkaJS/, ''), message, { retriable: !fatal, cause: err });
}
