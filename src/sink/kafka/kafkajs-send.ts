/**
 * Part of the kafkajs door (kafkajs-internals.ts installs it where kafkajs's producer requires
 * kafkajs/src/producer/sendMessages.js; test/unit/kafkajs-door.test.ts lists the door's files):
 * a send that tracks each partition, not each broker (docs/adr/0024-sends-tracked-per-partition.md).
 *
 * kafkajs 2.2.4's sendMessages groups a send's messages by partition, the partitions by leader,
 * sends one Produce request per leader in a Promise.all, and on a retriable error retries the
 * whole send, skipping the brokers that answered. It remembers answers per broker object, so
 * when leadership moves between attempts (a broker stopping, a coordinator move:
 * test/faults/coordinator-move.test.ts):
 * - a partition that moved from a broker that answered to one that did not is sent again, with
 *   the sequence numbers after the first: the broker appends the same records twice, and under
 *   exactly-once both commit in one transaction (seen: 305 records twice, producer epoch 0);
 * - a partition that moved to a broker that already answered is never sent, and the send
 *   resolves: its records are lost, and the slot moves past them;
 * - a partition missing from the refreshed metadata is dropped the same way;
 * - Promise.all rejects at the first failure, and the retry starts while other requests are in
 *   flight;
 * - a Produce response with an error on one partition fails the whole request, and the
 *   sequences of the partitions the broker appended are wound back with the rest.
 *
 * Here, every partition's records are sent until the broker acknowledges that partition, and
 * once after that never:
 * - messages are grouped by partition once per send (kafkajs's partitioner, outboxd's grouper),
 *   and the grouping holds for the whole send (partitions added to a topic meanwhile wait for
 *   the next send); a retry re-sends only partitions without an acknowledgement, to their
 *   leader of that moment;
 * - every request of an attempt has settled before the send is retried or fails;
 * - a partition the broker acknowledged (or answered DUPLICATE_SEQUENCE_NUMBER: it holds the
 *   batch) keeps its sequence. One it refused with another error code (mostly nothing appended;
 *   REQUEST_TIMED_OUT and NOT_ENOUGH_REPLICAS_AFTER_APPEND may have appended on the leader), and
 *   one whose request failed without an answer (a connection lost, a timeout: appended or not),
 *   is wound back to the sequence its request used and sent again with the same sequence
 *   numbers, which the broker de-duplicates if it holds them (idempotence);
 * - a partition without a leader in the metadata fails the attempt as retriable, after a refresh;
 * - sequences advance modulo 2^31, as the broker counts them (kafkajs's wrap to 0 skips values);
 * - sends of one producer go one at a time, so that a wound-back sequence is never taken by
 *   another send's records (the sinks send one at a time already; this makes it a rule).
 * The errors, their retriability and the metadata refreshes are kafkajs's own: the sinks'
 * classification of refusals (poison, missing topics) sees what it saw.
 *
 * Nothing here loads kafkajs: installKafkajs() hands it kafkajs's error helpers.
 */

/** kafkajs's error helpers that sendMessages uses. */
export interface SendKafkajs {
  /** kafkajs's KafkaJSMetadataNotLoaded (retriable). */
  metadataNotLoaded(message: string): Error;
  /** kafkajs's staleMetadata: NOT_LEADER, LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION. */
  staleMetadata(err: unknown): boolean;
  /** kafkajs's createErrorFromCode: the error its Produce response parse throws for a partition's error code. */
  errorOf(code: number): Error;
  /** kafkajs's groupMessagesPerPartition (outboxd's grouper). */
  group(a: { topic: string; partitionMetadata: unknown[]; messages: unknown[]; partitioner: unknown }): Record<number, unknown[]>;
}

/** One partition's answer, as kafkajs's sendBatch resolves it (responseSerializer). */
export type PartitionAnswer = { topicName: string; partition: number; errorCode: number } & Record<string, unknown>;
type ResponseTopic = { topicName: string; partitions: Array<{ partition: number; errorCode: number } & Record<string, unknown>> };
/** A decoded Produce response (every version's decode gives this shape). */
export type ProduceResponse = { topics: ResponseTopic[] };

/** Where a Produce response's refusal carries the whole decoded response (kafkajs-internals.ts puts it there). */
export const PRODUCE_RESPONSE = Symbol('outboxd.produceResponse');

/** The decoded response a Produce refusal came with, if it came with one. */
export function responseOf(err: unknown): ProduceResponse | undefined {
  return err !== null && typeof err === 'object' ? (err as { [PRODUCE_RESPONSE]?: ProduceResponse })[PRODUCE_RESPONSE] : undefined;
}

/** A Produce response module of kafkajs (kafkajs/src/protocol/requests/produce/vN/response.js). */
export type ProduceResponseModule = { parse(data: ProduceResponse): Promise<unknown>; [CARRIES]?: true };
const CARRIES = Symbol('outboxd.carriesResponse');

/** Makes a Produce response module's refusals carry the decoded response (PRODUCE_RESPONSE); the same errors otherwise. */
export function carryResponse(mod: ProduceResponseModule): void {
  if (mod[CARRIES]) return;
  const parse = mod.parse;
  mod.parse = async (data) => {
    try {
      return await parse(data);
    } catch (err) {
      if (err !== null && typeof err === 'object') Object.defineProperty(err, PRODUCE_RESPONSE, { value: data });
      throw err;
    }
  };
  mod[CARRIES] = true;
}

interface Broker {
  nodeId: number | string;
  produce(r: Record<string, unknown>): Promise<ProduceResponse | undefined>;
}
interface Cluster {
  addMultipleTargetTopics(topics: string[]): Promise<unknown>;
  refreshMetadataIfNecessary(): Promise<unknown>;
  refreshMetadata(): Promise<unknown>;
  findTopicPartitionMetadata(topic: string): unknown[];
  findLeaderForPartitions(topic: string, partitions: number[]): Record<string, number[]>;
  findBroker(r: { nodeId: string }): Promise<Broker>;
  isConnected(): boolean;
  connect(): Promise<unknown>;
  removeBroker(r: { host: string; port: number }): unknown;
}
interface EosManager {
  isTransactional(): boolean;
  getTransactionalId(): string;
  getProducerId(): number;
  getProducerEpoch(): number;
  getSequence(topic: string, partition: number): number;
  updateSequence(topic: string, partition: number, increment: number): void;
  addPartitionsToTransaction(topicData: TopicData[]): Promise<unknown>;
  acquireBrokerLock(broker: Broker): Promise<unknown>;
  releaseBrokerLock(broker: Broker): unknown;
}
type Logger = { debug(m: string, extra?: object): void; error(m: string, extra?: object): void };
type Retrier = <T>(fn: (bail: (e: Error) => void, retryCount: number, retryTime: number) => Promise<T>) => Promise<T>;
type TopicData = { topic: string; partitions: Array<{ partition: number; messages: unknown[]; firstSequence?: number }> };
type ErrorLike = Error & { retriable?: boolean; type?: string; host?: string; port?: number };

export type SendMessagesFactory = (o: {
  logger: Logger;
  cluster: Cluster;
  partitioner: unknown;
  eosManager: EosManager;
  retrier: Retrier;
}) => (r: {
  acks: number;
  timeout?: number;
  compression?: number;
  topicMessages: Array<{ topic: string; messages: unknown[] }>;
}) => Promise<PartitionAnswer[]>;

/** Whether kafkajs's sendMessages retries after this error (else it bails): marked retriable. */
function retriable(e: ErrorLike): boolean {
  return e.retriable === true;
}

/** kafkajs's sendMessages, tracking partitions (see the header). */
export function sendMessages(k: SendKafkajs): SendMessagesFactory {
  return ({ logger, cluster, partitioner, eosManager, retrier }) => {
    /** The producer's last send, settled or not: the next one starts after it. */
    let last: Promise<unknown> = Promise.resolve();
    const one: ReturnType<SendMessagesFactory> = async ({ acks, timeout, compression, topicMessages: given }) => {
      // sendBatch merges a topic's lists; merged again here, so none is left out by the grouping.
      const byTopic = new Map<string, unknown[]>();
      for (const { topic, messages } of given) {
        const before = byTopic.get(topic);
        byTopic.set(topic, before === undefined ? messages : [...before, ...messages]);
      }
      const topicMessages = [...byTopic].map(([topic, messages]) => ({ topic, messages }));
      const topics = topicMessages.map((t) => t.topic);
      /** Each topic's messages by partition, fixed by the first attempt that had its metadata. */
      const grouped = new Map<string, Record<number, unknown[]>>();
      /** Each acknowledged partition's answer, by topic, then partition. */
      const answered = new Map<string, Map<number, PartitionAnswer>>();
      const answer = (a: PartitionAnswer) => {
        let t = answered.get(a.topicName);
        if (t === undefined) {
          t = new Map();
          answered.set(a.topicName, t);
        }
        t.set(a.partition, a);
      };

      /** One request to one leader: its partitions' records; answers what the broker acknowledged. */
      const produce = async (broker: Broker, topicData: TopicData[]): Promise<void> => {
        await eosManager.acquireBrokerLock(broker);
        try {
          if (eosManager.isTransactional()) await eosManager.addPartitionsToTransaction(topicData);
          for (const { topic, partitions } of topicData) {
            for (const entry of partitions) {
              const first = eosManager.getSequence(topic, entry.partition);
              entry.firstSequence = first;
              // The next batch's first sequence, modulo 2^31 as the broker counts (kafkajs sets 0
              // once the sum reaches INT32's max, which the broker refuses as out of order).
              eosManager.updateSequence(topic, entry.partition, ((first + entry.messages.length) % SEQUENCE_SPAN) - first);
            }
          }
          let response: ProduceResponse | undefined;
          let failure: unknown = null;
          try {
            response = await broker.produce({
              transactionalId: eosManager.isTransactional() ? eosManager.getTransactionalId() : undefined,
              producerId: eosManager.getProducerId(),
              producerEpoch: eosManager.getProducerEpoch(),
              acks,
              timeout,
              compression,
              topicData,
            });
          } catch (e) {
            failure = e;
            response = responseOf(e);
          }
          // What the broker acknowledged keeps its sequence; the rest is wound back, to go again.
          const codes = new Map<string, PartitionAnswer>();
          for (const t of response?.topics ?? []) {
            for (const p of t.partitions) codes.set(`${t.topicName}\0${p.partition}`, { topicName: t.topicName, ...p });
          }
          let missing = false;
          let refusal: unknown = null;
          for (const { topic, partitions } of topicData) {
            for (const entry of partitions) {
              const got = codes.get(`${topic}\0${entry.partition}`);
              if (acks === 0 && failure === null) answer({ topicName: topic, partition: entry.partition, errorCode: 0 });
              else if (got !== undefined && (got.errorCode === 0 || got.errorCode === DUPLICATE_SEQUENCE_NUMBER)) answer(got);
              else {
                // Back to the sequence this request used (not minus its count: kafkajs wraps at INT32).
                const first = entry.firstSequence as number;
                eosManager.updateSequence(topic, entry.partition, first - eosManager.getSequence(topic, entry.partition));
                if (got === undefined) missing = true;
                // The refusal of the first partition refused: the error kafkajs's parse made of that code.
                else if (refusal === null)
                  refusal = (failure as { code?: number } | null)?.code === got.errorCode ? failure : k.errorOf(got.errorCode);
              }
            }
          }
          // No answer (a connection lost, a timeout): its own error. A refusal: the first refused
          // partition's. Only DUPLICATE_SEQUENCE_NUMBER in an answer: every partition is held.
          if (failure !== null && response === undefined) throw failure;
          if (refusal !== null) throw refusal;
          if (missing && acks !== 0) {
            throw k.metadataNotLoaded(`the Produce response of broker ${String(broker.nodeId)} left out a partition it was sent`);
          }
        } finally {
          await eosManager.releaseBrokerLock(broker);
        }
      };

      /** One attempt: every partition without an acknowledgement, to its leader now; waits for every request. */
      const attempt = async (): Promise<void> => {
        await cluster.refreshMetadataIfNecessary();
        for (const { topic, messages } of topicMessages) {
          if (grouped.has(topic)) continue;
          const partitionMetadata = cluster.findTopicPartitionMetadata(topic);
          if (partitionMetadata.length === 0) {
            logger.debug('Producing to topic without metadata', { topic });
            throw k.metadataNotLoaded('Producing to topic without metadata');
          }
          grouped.set(topic, k.group({ topic, partitionMetadata, messages, partitioner }));
        }
        const perLeader = new Map<string, TopicData[]>();
        for (const [topic, byPartition] of grouped) {
          const done = answered.get(topic);
          const pending = Object.keys(byPartition)
            .map(Number)
            .filter((p) => done?.has(p) !== true);
          if (pending.length === 0) continue;
          const leaders = cluster.findLeaderForPartitions(topic, pending);
          let placed = 0;
          for (const [nodeId, partitions] of Object.entries(leaders)) {
            placed += partitions.length;
            let data = perLeader.get(nodeId);
            if (data === undefined) {
              data = [];
              perLeader.set(nodeId, data);
            }
            data.push({ topic, partitions: partitions.map((p) => ({ partition: p, messages: byPartition[p] as unknown[] })) });
          }
          if (placed < pending.length) {
            throw k.metadataNotLoaded(`the metadata of topic ${topic} has no leader for ${pending.length - placed} of its partitions`);
          }
        }
        const settled = await Promise.allSettled(
          [...perLeader].map(async ([nodeId, topicData]) => produce(await cluster.findBroker({ nodeId }), topicData)),
        );
        const errors = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as ErrorLike] : []));
        if (errors.length > 0) {
          const chosen = errors.find((e) => !retriable(e)) ?? (errors[0] as ErrorLike);
          Object.defineProperty(chosen, ALL, { value: errors, configurable: true });
          throw chosen;
        }
      };

      return retrier(async (bail, retryCount, retryTime) => {
        await cluster.addMultipleTargetTopics(topics);
        try {
          await attempt();
          const out: PartitionAnswer[] = [];
          if (acks === 0) return out;
          for (const t of answered.values()) out.push(...t.values());
          return out;
        } catch (err) {
          const e = err as ErrorLike;
          const all = (e as { [ALL]?: ErrorLike[] })[ALL] ?? [e];
          for (const one of all) {
            if (one.name === 'KafkaJSConnectionClosedError') cluster.removeBroker({ host: one.host as string, port: one.port as number });
          }
          if (!cluster.isConnected()) {
            logger.debug(`Cluster has disconnected, reconnecting: ${e.message}`, { retryCount, retryTime });
            await cluster.connect();
            await cluster.refreshMetadata();
            throw e;
          }
          if (all.some(staleOrGone(k))) {
            logger.error(`Failed to send messages: ${e.message}`, { retryCount, retryTime });
            await cluster.refreshMetadata();
          } else logger.error(`${e.message}`, { retryCount, retryTime });
          if (retriable(e)) throw e;
          bail(e);
          return [];
        }
      });
    };
    return (r) => {
      const run = last.then(() => one(r));
      last = run.catch(() => undefined);
      return run;
    };
  };
}

/** Sequence numbers run 0 to 2^31 - 1, then 0 again (the broker's DefaultRecordBatch.incrementSequence). */
const SEQUENCE_SPAN = 2 ** 31;

/** The broker holds the batch already (older brokers' answer to a de-duplicated retry). */
const DUPLICATE_SEQUENCE_NUMBER = 46;

/** Where an attempt's error carries all of the attempt's errors. */
const ALL = Symbol('outboxd.sendErrors');

/** kafkajs's test for an error after which the metadata is refreshed. */
function staleOrGone(k: SendKafkajs): (e: ErrorLike) => boolean {
  return (e) =>
    k.staleMetadata(e) ||
    e.name === 'KafkaJSMetadataNotLoaded' ||
    e.name === 'KafkaJSConnectionError' ||
    e.name === 'KafkaJSConnectionClosedError' ||
    (e.name === 'KafkaJSProtocolError' && e.retriable === true);
}
