import { Worker } from 'node:worker_threads';
import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import { type PoisonError, SinkError } from '../../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../interfaces.js';
import { workerResourceLimits } from '../../runtime.js';
import type { Logger } from '../../observability/logger.js';
import { KafkaSink } from './at-least-once.js';
import {
  MISSING_TOPIC,
  RECORD_OVERHEAD_BYTES,
  SEND_MAX_MESSAGES,
  checkMessage,
  classify,
  createKafka,
  isMessageError,
  missingTopics,
} from './client.js';
import { TopicPartitions } from './metadata.js';
import { partitionOf } from './partition.js';
import { encodeRecords } from './produce-encoder.js';
import type { FromWorker, ToWorker, UnitMessage, WireError, WorkerInit } from './worker-thread.js';

/**
 * Kafka at least once, published from worker threads (docs/adr/0010). The main thread reads,
 * decodes and maps; it computes each message's partition (Java-compatible murmur2, as kafkajs
 * and the Java client do) and encodes its record; the worker that owns the partition sends it
 * with an idempotent producer of its own. A partition's messages go through exactly one producer,
 * in order, so per-key order holds as with one producer.
 *
 * `publish` resolves once every worker confirmed its part of the batch, as the Sink contract
 * asks. A failed part stops its worker's later parts of the batch; the pipeline then retries the
 * batch whole (the parts that went through are sent again, as at-least-once allows). A message
 * the broker refuses is found by sending the unconfirmed messages one at a time, in order, on the
 * main thread's own producer (also the one for dead letters), while the workers are idle.
 */
export class KafkaWorkerSink implements Sink {
  readonly type = 'kafka' as const;
  private readonly kafka: kafkajs.Kafka;
  /**
   * Worker i once started. A worker starts when a partition it owns first gets a message, so no
   * more run than partitions written to, whatever `sink.kafka.workers` says; one that exits is
   * started again by the next batch that needs it.
   */
  private workers: Array<Promise<Slot> | null>;
  private readonly live = new Set<Slot>();
  /** Sends not yet answered, each with the worker it went to (a worker that exits fails its own). */
  private readonly pending = new Map<number, { slot: Slot; resolve: () => void; reject: (e: WireError, skipped: boolean) => void }>();
  private nextId = 1;
  private nextBatch = 1;
  private readonly partitions: TopicPartitions;
  /** Single sends (isolating a refused message) and dead letters, on the main thread. */
  private readonly direct: KafkaSink;
  private admin: kafkajs.Admin | null = null;

  constructor(
    private readonly cfg: KafkaSinkConfig,
    private readonly count: number,
    private readonly log: Logger,
    private readonly onConnection: (up: boolean) => void = () => undefined,
  ) {
    this.kafka = createKafka(cfg, log);
    this.direct = new KafkaSink(cfg, log);
    this.partitions = new TopicPartitions(this.kafka, cfg, () => this.adminClient());
    this.workers = new Array<Promise<Slot> | null>(count).fill(null);
  }

  async connect(): Promise<void> {
    await this.direct.connect();
    this.onConnection(true);
  }

  private worker(i: number): Promise<Slot> {
    const started = this.workers[i];
    if (started) return started;
    const init: WorkerInit = {
      cfg: {
        clientId: this.cfg.clientId,
        brokers: this.cfg.brokers,
        connectionTimeoutMs: this.cfg.connectionTimeoutMs,
        requestTimeoutMs: this.cfg.requestTimeoutMs,
        ssl: this.cfg.ssl,
        sasl: this.cfg.sasl,
        autoCreateTopics: this.cfg.autoCreateTopics,
        compression: this.cfg.compression,
      },
    };
    const options = { workerData: init, name: `outboxd-kafka-${i}`, resourceLimits: workerResourceLimits() };
    const worker = new Worker(new URL('./worker-thread.js', import.meta.url), options);
    const slot: Slot = { worker, up: false };
    this.live.add(slot);
    const ready = new Promise<Slot>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') resolve(slot);
        else if (m.type === 'connection') this.connection(slot, m.up);
        else if (m.type === 'done') this.settle(m.id, null, false);
        else if (m.id === -1) reject(classify(asError(m.error), 'connecting to Kafka'));
        else this.settle(m.id, m.error, m.skipped);
      });
      worker.on('error', (err) => {
        this.log.error({ err, worker: i }, 'Kafka worker thread crashed');
        this.forget(i, slot, ready);
        reject(err);
        this.failAll({ name: 'WorkerError', message: `Kafka worker ${i} crashed: ${err.message}`, retriable: false });
      });
      // Terminated (close) or gone: whatever waits on it fails, retriable; the next batch starts it again.
      worker.on('exit', () => {
        this.forget(i, slot, ready);
        const gone: WireError = { name: 'WorkerExited', message: `Kafka worker ${i} exited`, retriable: true };
        reject(classify(asError(gone), 'starting a Kafka worker'));
        for (const [id, p] of this.pending) if (p.slot === slot) this.settle(id, gone, false);
        this.onConnection([...this.live].every((w) => w.up));
      });
    });
    ready.then(
      () => this.log.info({ worker: i, of: this.count }, 'Kafka worker thread started'),
      () => worker.terminate().catch(() => undefined),
    );
    this.workers[i] = ready;
    return ready;
  }

  /** Worker i's thread is no longer one to send to. */
  private forget(i: number, slot: Slot, ready: Promise<Slot>): void {
    this.live.delete(slot);
    if (this.workers[i] === ready) this.workers[i] = null;
  }

  private connection(slot: Slot, up: boolean): void {
    slot.up = up;
    this.onConnection([...this.live].every((w) => w.up));
  }

  private settle(id: number, error: WireError | null, skipped: boolean): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (error === null) p.resolve();
    else p.reject(error, skipped);
  }

  private failAll(error: WireError): void {
    for (const [id] of this.pending) this.settle(id, error, false);
  }

  check(m: OutboxMessage): PoisonError | null {
    return checkMessage(this.cfg, m);
  }

  partitionOf(m: OutboxMessage): number | null {
    const count = this.partitions.peek(m.destination);
    return count === undefined ? null : partitionOf(m.key, count);
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    const counts = await this.partitions.of(batch);
    const units = this.units(batch, counts);
    const used = [...new Set(units.map((u) => u.worker))];
    const slots = new Map((await Promise.all(used.map((w) => this.worker(w)))).map((slot, j) => [used[j] as number, slot]));
    const batchId = this.nextBatch++;
    const failures: Array<{ unit: Unit; error: WireError }> = [];
    let unconfirmed: number[] = [];
    await Promise.all(
      units.map((u) =>
        this.send(slots.get(u.worker) as Slot, u, batchId).catch((err: { error: WireError; skipped: boolean }) => {
          if (!err.skipped) failures.push({ unit: u, error: err.error });
          unconfirmed = unconfirmed.concat(u.items);
        }),
      ),
    );
    if (failures.length === 0) {
      this.onConnection(true);
      return { poisoned: [] };
    }
    const first = failures[0] as { unit: Unit; error: WireError };
    const error = asError(first.error);
    if (failures.some((f) => f.error.type === MISSING_TOPIC)) {
      throw await missingTopics(
        this.adminClient(),
        this.cfg,
        [...new Set(unconfirmed.map((i) => (batch[i] as OutboxMessage).destination))],
        error,
      );
    }
    if (!failures.some((f) => isMessageError(asError(f.error)))) throw classify(error, 'publishing to Kafka');
    // A message error: send what was not confirmed one message at a time, in batch order.
    unconfirmed.sort((a, b) => a - b);
    const poisoned: Array<{ index: number; error: PoisonError }> = [];
    for (const i of unconfirmed) {
      const one = await this.direct.publish([batch[i] as OutboxMessage]);
      for (const p of one.poisoned) poisoned.push({ index: i, error: p.error });
    }
    if (poisoned.length === 0 && first.error.type === undefined) {
      throw new SinkError('client_error', `publishing to Kafka: ${first.error.message}`, { retriable: false });
    }
    return { poisoned };
  }

  private send(slot: Slot, u: Unit, batch: number): Promise<void> {
    const id = this.nextId++;
    const msg: UnitMessage = { type: 'send', id, batch, topics: u.topics, bytes: u.bytes, index: u.index };
    const done = new Promise<void>((resolve, reject) => {
      this.pending.set(id, { slot, resolve, reject: (error, skipped) => reject({ error, skipped }) });
    });
    // Closed or crashed while this batch waited for its workers to start: fail it, retriable.
    if (!this.live.has(slot)) this.settle(id, { name: 'WorkerExited', message: 'the Kafka worker exited', retriable: true }, false);
    else slot.worker.postMessage(msg satisfies ToWorker, [u.bytes]);
    return done;
  }

  /**
   * The batch cut into units: per worker, in batch order, at most SEND_MAX_MESSAGES messages and
   * 90% of maxMessageBytes each, every record encoded with its offset delta in its partition.
   */
  private units(batch: readonly OutboxMessage[], counts: Map<string, number>): Unit[] {
    const limit = Math.max(1024, Math.floor(this.cfg.maxMessageBytes * 0.9));
    const open = new Array<Building | null>(this.count).fill(null);
    const out: Unit[] = [];
    const close = (w: number) => {
      const b = open[w];
      if (!b) return;
      open[w] = null;
      const { bytes, ends } = encodeRecords(batch, b.items, b.deltas);
      const index = new Int32Array(b.items.length * 3);
      for (let j = 0; j < b.items.length; j++) {
        index[j * 3] = b.topicOf[j] as number;
        index[j * 3 + 1] = b.partitionOf[j] as number;
        index[j * 3 + 2] = ends[j] as number;
      }
      out.push({ worker: w, items: b.items, topics: b.topics, bytes: bytes.buffer as ArrayBuffer, index });
    };
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      const n = counts.get(m.destination) as number;
      const partition = partitionOf(m.key, n);
      const w = (topicHash(m.destination) + partition) % this.count;
      const size = m.sizeBytes + RECORD_OVERHEAD_BYTES;
      let b = open[w];
      if (b && (b.items.length >= SEND_MAX_MESSAGES || b.bytes + size > limit)) {
        close(w);
        b = null;
      }
      if (!b) {
        b = {
          items: [],
          deltas: [],
          topics: [],
          topicIndex: new Map(),
          topicOf: [],
          partitionOf: [],
          next: new Map(),
          bytes: 0,
        };
        open[w] = b;
      }
      let t = b.topicIndex.get(m.destination);
      if (t === undefined) {
        t = b.topics.length;
        b.topics.push(m.destination);
        b.topicIndex.set(m.destination, t);
      }
      const tp = t * 65_536 + partition;
      const delta = b.next.get(tp) ?? 0;
      b.next.set(tp, delta + 1);
      b.items.push(i);
      b.deltas.push(delta);
      b.topicOf.push(t);
      b.partitionOf.push(partition);
      b.bytes += size;
    }
    for (let w = 0; w < open.length; w++) close(w);
    return out;
  }

  private adminClient(): kafkajs.Admin {
    this.admin ??= this.kafka.admin();
    return this.admin;
  }

  publishDeadLetter(letter: DeadLetter): Promise<void> {
    return this.direct.publishDeadLetter(letter);
  }

  /** After a failed publish: fresh producers everywhere, and fresh metadata. */
  async reset(): Promise<void> {
    for (const { worker } of this.live) worker.postMessage({ type: 'reset' } satisfies ToWorker);
    this.partitions.clear();
    await this.direct.reset();
  }

  private async stopWorkers(): Promise<void> {
    const live = [...this.live];
    this.live.clear();
    this.workers.fill(null);
    this.failAll({ name: 'Closed', message: 'the Kafka sink was closed', retriable: true });
    await Promise.all(live.map(({ worker }) => worker.terminate().catch(() => undefined)));
  }

  async close(): Promise<void> {
    await this.stopWorkers();
    await this.partitions.disconnect();
    const admin = this.admin;
    this.admin = null;
    if (admin) await admin.disconnect().catch(() => undefined);
    await this.direct.close();
  }
}

/** A started worker thread, and whether its producer is connected. */
interface Slot {
  readonly worker: Worker;
  up: boolean;
}

/** What a worker sends as one sendBatch. `items`: the batch indexes of its records, in order. */
interface Unit {
  readonly worker: number;
  readonly items: number[];
  readonly topics: string[];
  readonly bytes: ArrayBuffer;
  readonly index: Int32Array;
}

interface Building {
  items: number[];
  deltas: number[];
  topics: string[];
  topicIndex: Map<string, number>;
  topicOf: number[];
  partitionOf: number[];
  /** The next offset delta per topic index · 65,536 + partition. */
  next: Map<number, number>;
  bytes: number;
}

/** Spreads the topics' partitions over the workers: partition 0 of each topic on another worker. */
function topicHash(topic: string): number {
  let h = 0;
  for (let i = 0; i < topic.length; i++) h = (Math.imul(h, 31) + topic.charCodeAt(i)) | 0;
  return h & 0x7fffffff;
}

/** A worker's error as an Error that classify() and isMessageError() read as the original. */
function asError(e: WireError): Error {
  const err =
    e.name === 'TypeError' ? new TypeError(e.message) : e.name === 'RangeError' ? new RangeError(e.message) : new Error(e.message);
  if (err.constructor === Error) err.name = e.name;
  Object.assign(err, e.type === undefined ? {} : { type: e.type }, e.retriable === undefined ? {} : { retriable: e.retriable });
  return err;
}
