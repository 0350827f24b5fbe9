/**
 * A Kafka publishing worker (docs/adr/0010): one idempotent kafkajs producer, fed by the relay's
 * main thread with records it has already encoded, for the partitions this worker owns. It sends
 * each unit as one sendBatch, in the order units arrive, and answers each with done or failed.
 * After a failure it sends nothing more of that batch: the main thread retries the batch whole,
 * so no message of a partition overtakes an earlier one that failed.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import { createLogger } from '../../observability/logger.js';
import { compressionOf, createKafka } from './client.js';
import { RAW } from './produce-encoder.js';

/** A unit: records of one or more partitions, for one sendBatch. */
export interface UnitMessage {
  readonly type: 'send';
  readonly id: number;
  readonly batch: number;
  readonly topics: readonly string[];
  /** The records, back to back (transferred, not copied). */
  readonly bytes: ArrayBuffer;
  /** Per record: [topic index, partition, end offset in bytes]. */
  readonly index: Int32Array;
}

export type ToWorker = UnitMessage | { readonly type: 'reset' } | { readonly type: 'close' };

/** An error as it crosses threads: what classify() and isMessageError() read of it. */
export interface WireError {
  name: string;
  message: string;
  /** The broker's error code name, found along the cause chain. */
  type?: string;
  /** The innermost retriable flag along the cause chain. */
  retriable?: boolean;
}

export type FromWorker =
  | { readonly type: 'ready' }
  | { readonly type: 'done'; readonly id: number }
  | { readonly type: 'failed'; readonly id: number; readonly error: WireError; readonly skipped: boolean }
  | { readonly type: 'connection'; readonly up: boolean };

export interface WorkerInit {
  readonly cfg: Pick<
    KafkaSinkConfig,
    'clientId' | 'brokers' | 'connectionTimeoutMs' | 'requestTimeoutMs' | 'ssl' | 'sasl' | 'autoCreateTopics' | 'compression'
  >;
}

const port = parentPort;
if (port) {
  const init = workerData as WorkerInit;
  const kafka = createKafka(init.cfg as KafkaSinkConfig, createLogger('silent'));
  const compression = compressionOf(init.cfg);
  let producer: kafkajs.Producer | null = null;
  let failedBatch = -1;
  let queue: Promise<void> = Promise.resolve();
  const post = (m: FromWorker) => port.postMessage(m);

  const getProducer = async (): Promise<kafkajs.Producer> => {
    if (producer) return producer;
    const p = kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: init.cfg.autoCreateTopics,
      // The main thread chose every message's partition (Java-compatible murmur2).
      createPartitioner:
        () =>
        ({ message }) =>
          message.partition as number,
    });
    await p.connect();
    p.on(p.events.DISCONNECT, () => post({ type: 'connection', up: false }));
    producer = p;
    post({ type: 'connection', up: true });
    return p;
  };

  const send = async (u: UnitMessage): Promise<void> => {
    if (u.batch === failedBatch) {
      post({ type: 'failed', id: u.id, error: { name: 'Skipped', message: 'an earlier unit of this batch failed' }, skipped: true });
      return;
    }
    try {
      const p = await getProducer();
      const bytes = Buffer.from(u.bytes);
      const byTopic = u.topics.map((topic) => ({ topic, messages: [] as kafkajs.Message[] }));
      let start = 0;
      for (let i = 0; i < u.index.length; i += 3) {
        const end = u.index[i + 2] as number;
        const m = { partition: u.index[i + 1] as number, value: '', [RAW]: bytes.subarray(start, end) } as kafkajs.Message;
        (byTopic[u.index[i] as number] as { messages: kafkajs.Message[] }).messages.push(m);
        start = end;
      }
      // Our Produce encoder compresses each partition's records (codecs.ts), on this thread.
      await p.sendBatch({ acks: -1, compression, topicMessages: byTopic });
      post({ type: 'done', id: u.id });
    } catch (err) {
      failedBatch = u.batch;
      post({ type: 'failed', id: u.id, error: wire(err), skipped: false });
    }
  };

  const reset = async (): Promise<void> => {
    const p = producer;
    producer = null;
    if (p) await p.disconnect().catch(() => undefined);
  };

  port.on('message', (m: ToWorker) => {
    if (m.type === 'send') queue = queue.then(() => send(m));
    else if (m.type === 'reset') queue = queue.then(reset);
    else queue = queue.then(reset).then(() => port.close());
  });
  getProducer().then(
    () => post({ type: 'ready' }),
    (err: unknown) => post({ type: 'failed', id: -1, error: wire(err), skipped: false }),
  );
}

/** What crosses the thread boundary of a kafkajs error. */
export function wire(err: unknown): WireError {
  let type: string | undefined;
  let retriable: boolean | undefined;
  for (let e = err as { type?: unknown; retriable?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
    if (type === undefined && typeof e.type === 'string') type = e.type;
    if (typeof e.retriable === 'boolean') retriable = e.retriable;
    e = e.cause as typeof e;
  }
  const out: WireError = { name: (err as Error)?.name ?? 'Error', message: (err as Error)?.message ?? String(err) };
  if (type !== undefined) out.type = type;
  if (retriable !== undefined) out.retriable = retriable;
  return out;
}
