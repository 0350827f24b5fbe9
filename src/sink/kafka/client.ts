import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import { MissingDestinationError, PoisonError, SinkError } from '../../errors.js';
import type { DeadLetter, OutboxMessage } from '../../interfaces.js';
import type { Logger } from '../../observability/logger.js';
import { type DeadLetterForm, deadLetterForms, formBytes } from '../dead-letter.js';
import { saslOptions } from './auth.js';
import { CODEC_ID } from './codecs.js';
import { installKafkajs } from './kafkajs-internals.js';
import { javaCompatiblePartitioner } from './partition.js';

/**
 * What both Kafka sinks (at-least-once and exactly-once) share: the client, how a batch is cut
 * into sends, what a message looks like to kafkajs, what is checked before sending, and how
 * kafkajs's errors are read.
 */

/**
 * Broker answers that concern one message, not the connection: the send is repeated one message
 * at a time to find which, and that one is poison. Whether any other error is retried is
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
export const MISSING_TOPIC = 'UNKNOWN_TOPIC_OR_PARTITION';
/**
 * Messages per send. kafkajs grouped a send's messages by partition by copying the partition's
 * array once per message, so its garbage grew with the square of the messages per send; with
 * that replaced (kafkajs-internals.ts) a send may hold a whole batch, and the broker handles a
 * quarter of the requests. The byte bound (90% of maxMessageBytes) usually cuts first.
 */
export const SEND_MAX_MESSAGES = 2_000;
/** Per-record overhead of the v2 record format, a conservative bound. */
export const RECORD_OVERHEAD_BYTES = 128;
const TOPIC_NAME = /^[a-zA-Z0-9._-]{1,249}$/;

export function createKafka(cfg: KafkaSinkConfig, log: Logger): kafkajs.Kafka {
  const { Kafka, logLevel } = installKafkajs();
  const kLog = log.child({ module: 'kafkajs' });
  return new Kafka({
    clientId: cfg.clientId,
    brokers: cfg.brokers,
    connectionTimeout: cfg.connectionTimeoutMs,
    requestTimeout: cfg.requestTimeoutMs,
    ssl: cfg.ssl
      ? {
          ca: cfg.ssl.ca,
          cert: cfg.ssl.cert,
          key: cfg.ssl.key,
          passphrase: cfg.ssl.passphrase,
          rejectUnauthorized: cfg.ssl.rejectUnauthorized,
          servername: cfg.ssl.servername,
        }
      : false,
    sasl: cfg.sasl ? saslOptions(cfg.sasl, log.child({ module: 'kafka-auth' })) : undefined,
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
}

/**
 * A batch cut into sends no larger than 90% of `maxMessageBytes` (kafkajs puts a partition's
 * messages of one send into one record batch, and the broker refuses a record batch over its
 * `message.max.bytes`) and of at most SEND_MAX_MESSAGES messages. Items keep their batch index.
 */
export function chunks(batch: readonly OutboxMessage[], maxMessageBytes: number): Array<Array<{ index: number; m: OutboxMessage }>> {
  const limit = Math.max(1024, Math.floor(maxMessageBytes * 0.9));
  const out: Array<Array<{ index: number; m: OutboxMessage }>> = [];
  let chunk: Array<{ index: number; m: OutboxMessage }> = [];
  let size = 0;
  for (let i = 0; i < batch.length; i++) {
    const m = batch[i] as OutboxMessage;
    const s = m.sizeBytes + RECORD_OVERHEAD_BYTES;
    if (chunk.length > 0 && (size + s > limit || chunk.length >= SEND_MAX_MESSAGES)) {
      out.push(chunk);
      chunk = [];
      size = 0;
    }
    chunk.push({ index: i, m });
    size += s;
  }
  if (chunk.length > 0) out.push(chunk);
  return out;
}

/** Messages grouped by topic, as kafkajs's sendBatch takes them. */
export function topicMessages(messages: readonly OutboxMessage[]): kafkajs.TopicMessages[] {
  const byTopic = new Map<string, kafkajs.Message[]>();
  for (const m of messages) {
    let list = byTopic.get(m.destination);
    if (!list) {
      list = [];
      byTopic.set(m.destination, list);
    }
    list.push({ key: m.key, value: m.payload, headers: m.headers as Record<string, string> });
  }
  return [...byTopic].map(([topic, msgs]) => ({ topic, messages: msgs }));
}

/** kafkajs's compression type for sink.kafka.compression (Kafka's codec id, which kafkajs uses too). */
export function compressionOf(cfg: Pick<KafkaSinkConfig, 'compression'>): kafkajs.CompressionTypes {
  return CODEC_ID[cfg.compression] as kafkajs.CompressionTypes;
}

/** Topic names seen legal (a Set lookup is cheaper than the regular expression, per message). */
const legalTopics = new Set<string>();

/** Problems we can see before sending: a bad topic name or a message above the size limit. */
export function checkMessage(cfg: KafkaSinkConfig, m: OutboxMessage): PoisonError | null {
  if (legalTopics.has(m.destination)) {
    // known good
  } else if (TOPIC_NAME.test(m.destination)) {
    if (legalTopics.size < 10_000) legalTopics.add(m.destination);
  } else {
    return new PoisonError('unroutable', `topic "${m.destination.slice(0, 100)}" is not a legal Kafka topic name`);
  }
  if (m.sizeBytes + RECORD_OVERHEAD_BYTES > cfg.maxMessageBytes) {
    return new PoisonError('oversized', `message of ${m.sizeBytes} bytes exceeds sink.kafka.maxMessageBytes (${cfg.maxMessageBytes})`);
  }
  return null;
}

/** The poison error for a message the broker (or the client) refused on its own. */
export function refusedMessage(m: OutboxMessage, err: unknown): PoisonError {
  const t = protocolErrorType(err);
  if (t === undefined) return new PoisonError('rejected', `the Kafka client refused message ${m.id}: ${(err as Error).message}`, err);
  const reason = t === 'INVALID_TOPIC_EXCEPTION' ? 'unroutable' : t === 'MESSAGE_TOO_LARGE' ? 'oversized' : 'rejected';
  return new PoisonError(reason, `Kafka refused message: ${t}`, err);
}

/**
 * The forms of a dead letter to try, largest first, without those over `maxMessageBytes` (the
 * last always stays: its values are bounded, so it is a few KiB whatever the message held, its
 * key included): dead-letter.ts. The dead-letter topic is fixed and has a legal name (the broker
 * refuses one that has not), and Kafka limits headers only by the record's size.
 */
export function deadLetterCandidates(letter: DeadLetter, maxMessageBytes: number): DeadLetterForm[] {
  const forms = deadLetterForms(letter);
  return forms.filter((f, i) => i === forms.length - 1 || formBytes(f) + RECORD_OVERHEAD_BYTES <= maxMessageBytes);
}

/**
 * The broker does not know some of `topics`. Names which ones (a metadata request), so the
 * operator knows what to create; retriable, since a topic may be created at any moment. Never
 * poison: the messages are fine, their destination is not there yet.
 */
export async function missingTopics(
  admin: kafkajs.Admin,
  cfg: KafkaSinkConfig,
  topics: readonly string[],
  cause: unknown,
): Promise<SinkError> {
  let missing = [...new Set(topics)];
  try {
    await admin.connect();
    const existing = new Set(await admin.listTopics());
    missing = missing.filter((t) => !existing.has(t));
  } catch {
    // Keep the whole list: better a longer name list than none.
  }
  const names = missing.map((t) => `"${t}"`).join(', ');
  const how = cfg.autoCreateTopics
    ? 'the broker does not create topics (auto.create.topics.enable is false)'
    : 'sink.kafka.autoCreateTopics is false';
  const many = missing.length > 1;
  return new MissingDestinationError(
    missing,
    `Kafka topic${many ? 's' : ''} ${names} ${many ? 'do' : 'does'} not exist and ${how}: create ${many ? 'them' : 'it'}; publishing waits and retries`,
    cause,
  );
}

/** Asks the broker which topics are missing, on an admin client made when first needed. */
export class TopicCheck {
  private admin: kafkajs.Admin | null = null;

  constructor(
    private readonly kafka: kafkajs.Kafka,
    private readonly cfg: KafkaSinkConfig,
  ) {}

  missing(topics: readonly string[], cause: unknown): Promise<SinkError> {
    this.admin ??= this.kafka.admin();
    return missingTopics(this.admin, this.cfg, topics, cause);
  }

  async close(): Promise<void> {
    const admin = this.admin;
    this.admin = null;
    if (admin) await admin.disconnect().catch(() => undefined);
  }
}

/**
 * A connected idempotent producer (acks=all is per send; one request in flight keeps a
 * partition's order through kafkajs's retries), or the connect failure classified, with the
 * half-made client torn down. `onConnection(false)` hears of the failure.
 */
export async function connectProducer(
  kafka: kafkajs.Kafka,
  cfg: KafkaSinkConfig,
  onConnection: (up: boolean) => void,
  extra: Partial<kafkajs.ProducerConfig> = {},
): Promise<kafkajs.Producer> {
  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: cfg.autoCreateTopics,
    // kafkajs's DefaultPartitioner's choices, without its 64-bit Long murmur2 (partition.ts).
    createPartitioner: javaCompatiblePartitioner,
    ...extra,
  });
  try {
    await producer.connect();
  } catch (err) {
    onConnection(false);
    await producer.disconnect().catch(() => undefined);
    throw classify(err, 'connecting to Kafka');
  }
  return producer;
}

/**
 * Sends the largest form of a dead letter that fits (dead-letter.ts): a form over
 * `maxMessageBytes` is skipped, and one the broker refuses as too large gives way to the next.
 * `send` publishes one form, with the form's key (`form.key`, not the letter's: the smallest
 * form leaves out a key too large to carry); `failure` turns its other errors into the sink's.
 */
export async function sendDeadLetter(
  cfg: KafkaSinkConfig,
  letter: DeadLetter,
  topics: TopicCheck,
  send: (form: DeadLetterForm) => Promise<void>,
  failure: (err: unknown, doing: string) => SinkError = classify,
): Promise<void> {
  const doing = `publishing to dead-letter topic ${cfg.deadLetterTopic}`;
  const forms = deadLetterCandidates(letter, cfg.maxMessageBytes);
  for (const [i, form] of forms.entries()) {
    try {
      await send(form);
      return;
    } catch (err) {
      if (protocolErrorType(err) === MISSING_TOPIC) throw await topics.missing([cfg.deadLetterTopic], err);
      if (!isMessageError(err)) throw failure(err, doing);
      if (i < forms.length - 1) continue;
      throw new SinkError('dead_letter_refused', `${doing}: refused even without payload and headers: ${classify(err, doing).message}`, {
        retriable: false,
        cause: err,
      });
    }
  }
}

/** The error concerns the messages sent, not the connection: a broker answer or a client refusal. */
export function isMessageError(err: unknown): boolean {
  const type = protocolErrorType(err);
  if (type !== undefined) return MESSAGE_ERRORS.has(type);
  return err instanceof TypeError || err instanceof RangeError;
}

/** The broker's error code name (`MESSAGE_TOO_LARGE`), looked for along the cause chain. */
export function protocolErrorType(err: unknown): string | undefined {
  for (let e = err as { type?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
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
  let retriable = false;
  for (let e = err as { retriable?: unknown; cause?: unknown; name?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
    if (typeof e.retriable === 'boolean') retriable = e.retriable;
    if (typeof e.name === 'string' && TRANSIENT.has(e.name)) {
      retriable = true;
      break;
    }
    e = e.cause as typeof e;
  }
  return new SinkError(type ?? name.replace(/^KafkaJS/, ''), message, { retriable, cause: err });
}

/**
 * kafkajs errors it marks not retriable that are a moment's condition, not a verdict. No broker
 * answered FindCoordinator (KafkaJSGroupCoordinatorNotFound): kafkajs gives up at once when the
 * coordinator's connection is refused, as while a broker restarts (found by the exactly-once
 * broker-restart test, committing); a refusal by ACL comes as its own protocol error instead.
 */
const TRANSIENT = new Set(['KafkaJSGroupCoordinatorNotFound']);

/** Broker answers that mean another producer now owns our transactional id. */
const FENCED = new Set(['INVALID_PRODUCER_EPOCH', 'PRODUCER_FENCED']);

/** Another producer holds our transactional id now (looked for along the cause chain). */
export function isFenced(err: unknown): boolean {
  const type = protocolErrorType(err);
  if (type !== undefined && FENCED.has(type)) return true;
  for (let e = err as { message?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
    // kafkajs 2.2.4 does not know error code 90 (PRODUCER_FENCED, Kafka 2.7+).
    if (typeof e.message === 'string' && /Unknown error code 90\b/.test(e.message)) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** The index after the chunk that starts at `from`, as chunks() cuts it. */
export function chunkEnd(messages: readonly OutboxMessage[], from: number, maxMessageBytes: number): number {
  const first = chunks(messages.slice(from), maxMessageBytes)[0] ?? [];
  return from + first.length;
}
