import kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../config/config.js';
import { MissingDestinationError, PoisonError, SinkError } from '../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import { type DeadLetterForm, deadLetterForms, formBytes } from './dead-letter.js';

const { Kafka, CompressionTypes, Partitioners, logLevel } = kafkajs;
type Producer = kafkajs.Producer;
type Message = kafkajs.Message;

/**
 * Broker answers that concern one message, not the connection: the chunk is sent again one
 * message at a time to find which, and that one is poison. Whether any other error is retried is
 * kafkajs's own `retriable` flag (see classify).
 */
const MESSAGE_ERRORS = new Set([
  'MESSAGE_TOO_LARGE',
  'RECORD_LIST_TOO_LARGE',
  'INVALID_RECORD',
  'CORRUPT_MESSAGE',
  'INVALID_TOPIC_EXCEPTION',
]);
/** The broker does not know the topic (it does not exist, and is not created for us). */
const MISSING_TOPIC = 'UNKNOWN_TOPIC_OR_PARTITION';
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
  private admin: kafkajs.Admin | null = null;
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
      allowAutoTopicCreation: this.cfg.autoCreateTopics,
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
  check(m: OutboxMessage): PoisonError | null {
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
      if (protocolErrorType(err) === MISSING_TOPIC) throw await this.missingTopics(chunk, err);
      if (!isMessageError(err)) throw classify(err, 'publishing to Kafka');
      // The broker (or the client) refused something in the chunk: find which messages, one at a
      // time, in order. An error that no single message reproduces is not the messages' fault.
      let pinned = false;
      for (const { index, m } of chunk) {
        try {
          await this.send(producer, [m]);
        } catch (one) {
          if (!isMessageError(one)) throw classify(one, 'publishing to Kafka');
          pinned = true;
          const t = protocolErrorType(one);
          poisoned.push({
            index,
            error:
              t === undefined
                ? new PoisonError('rejected', `the Kafka client refused message ${m.id}: ${(one as Error).message}`, one)
                : new PoisonError(
                    t === 'INVALID_TOPIC_EXCEPTION' ? 'unroutable' : t === 'MESSAGE_TOO_LARGE' ? 'oversized' : 'rejected',
                    `Kafka refused message: ${t}`,
                    one,
                  ),
          });
        }
      }
      if (!pinned && protocolErrorType(err) === undefined) {
        throw new SinkError('client_error', `publishing to Kafka: ${(err as Error).message}`, { retriable: false, cause: err });
      }
    }
  }

  /**
   * The broker does not know a topic of this chunk. Names which ones (a metadata request), so the
   * operator knows what to create; retriable, since the topic may be created at any moment.
   * Never poison: the messages are fine, their destination is not there yet.
   */
  private async missingTopics(chunk: ReadonlyArray<{ m: OutboxMessage }>, cause: unknown): Promise<SinkError> {
    const topics = [...new Set(chunk.map((c) => c.m.destination))];
    let missing = topics;
    try {
      this.admin ??= this.kafka.admin();
      await this.admin.connect();
      const existing = new Set(await this.admin.listTopics());
      missing = topics.filter((t) => !existing.has(t));
    } catch {
      // Keep the whole list: better a longer name list than none.
    }
    const names = missing.map((t) => `"${t}"`).join(', ');
    const how = this.cfg.autoCreateTopics
      ? 'the broker does not create topics (auto.create.topics.enable is false)'
      : 'sink.kafka.autoCreateTopics is false';
    return new MissingDestinationError(
      missing,
      `Kafka topic${missing.length > 1 ? 's' : ''} ${names} ${missing.length > 1 ? 'do' : 'does'} not exist and ${how}: create ${missing.length > 1 ? 'them' : 'it'}; publishing waits and retries`,
      cause,
    );
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

  /**
   * Sends the largest form of the dead letter that fits (dead-letter.ts): a form over
   * `maxMessageBytes` is skipped, and one the broker refuses as too large gives way to the next.
   */
  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    const producer = await this.getProducer();
    const doing = `publishing to dead-letter topic ${this.cfg.deadLetterTopic}`;
    const forms = deadLetterForms(letter);
    for (let i = 0; i < forms.length; i++) {
      const form = forms[i] as DeadLetterForm;
      const last = i === forms.length - 1;
      if (!last && formBytes(form) + (letter.key?.length ?? 0) + RECORD_OVERHEAD_BYTES > this.cfg.maxMessageBytes) continue;
      try {
        await producer.sendBatch({
          acks: -1,
          topicMessages: [{ topic: this.cfg.deadLetterTopic, messages: [{ key: letter.key, value: form.body, headers: form.headers }] }],
        });
        return;
      } catch (err) {
        if (protocolErrorType(err) === MISSING_TOPIC) {
          throw await this.missingTopics([{ m: { destination: this.cfg.deadLetterTopic } as OutboxMessage }], err);
        }
        if (!last && isMessageError(err)) continue;
        const e = classify(err, doing);
        if (last && isMessageError(err)) {
          throw new SinkError('dead_letter_refused', `${doing}: refused even without payload and headers: ${e.message}`, {
            retriable: false,
            cause: err,
          });
        }
        throw e;
      }
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
    const admin = this.admin;
    this.admin = null;
    if (admin) await admin.disconnect().catch(() => undefined);
  }
}

/** The error concerns the messages sent, not the connection: a broker answer or a client refusal. */
function isMessageError(err: unknown): boolean {
  const type = protocolErrorType(err);
  if (type !== undefined) return MESSAGE_ERRORS.has(type);
  return err instanceof TypeError || err instanceof RangeError;
}

function protocolErrorType(err: unknown): string | undefined {
  for (let e = err as { type?: unknown; cause?: unknown; errors?: unknown } | undefined, depth = 0; e && depth < 6; depth++) {
    if (typeof e.type === 'string') return e.type;
    e = e.cause as typeof e;
  }
  return undefined;
}

/**
 * kafkajs error → SinkError, retriable as kafkajs says. kafkajs wraps the error its own retries
 * gave up on (KafkaJSNumberOfRetriesExceeded, never retriable itself); what counts is the flag of
 * the innermost kafkajs error, the broker's or the connection's own. Anything that is not a
 * kafkajs error (a TypeError from the client) is not retriable.
 */
export function classify(err: unknown, doing: string): SinkError {
  if (err instanceof SinkError) return err;
  const type = protocolErrorType(err);
  const name = (err as Error)?.name ?? 'Error';
  const message = `${doing}: ${(err as Error)?.message ?? String(err)}${type && !(err as Error)?.message?.includes(type) ? ` (${type})` : ''}`;
  return new SinkError(type ?? name.replace(/^KafkaJS/, ''), message, { retriable: innermostRetriable(err), cause: err });
}

function innermostRetriable(err: unknown): boolean {
  let flag = false;
  for (let e = err as { retriable?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
    if (typeof e.retriable === 'boolean') flag = e.retriable;
    e = e.cause as typeof e;
  }
  return flag;
}
