import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { GROUPER } from '../../src/sink/kafka/kafkajs-internals.js';
import { PRODUCE_RESPONSE, type ProduceResponse, type SendMessagesFactory, sendMessages } from '../../src/sink/kafka/kafkajs-send.js';

/**
 * outboxd's sendMessages (src/sink/kafka/kafkajs-send.ts, docs/adr/0024), over a fake cluster whose
 * partition leaders move between a send's attempts, as they do when a broker stops (what
 * test/faults/coordinator-move.test.ts runs against three real brokers, where these cases show up
 * about one run in twenty). The retrier, the errors and the eosManager's sequence numbers are
 * kafkajs's own. The same cases against kafkajs 2.2.4's sendMessages show the duplicate and the
 * loss this replaces.
 */
const require = createRequire(import.meta.url);
const createRetry = require('kafkajs/src/retry/index.js') as (o: object) => never;
const { createErrorFromCode, staleMetadata } = require('kafkajs/src/protocol/error.js') as {
  createErrorFromCode(code: number): Error;
  staleMetadata(e: unknown): boolean;
};
const errors = require('kafkajs/src/errors.js') as {
  KafkaJSMetadataNotLoaded: new (m: string) => Error;
  KafkaJSConnectionClosedError: new (m: string, o: object) => Error;
};
const createEosManager = require('kafkajs/src/producer/eosManager/index.js') as (o: object) => {
  initProducerId(): Promise<void>;
  getSequence(t: string, p: number): number;
};
const kafkajsSendMessages = require('kafkajs/src/producer/sendMessages.js') as SendMessagesFactory;

const NOT_LEADER = 6;
const MESSAGE_TOO_LARGE = 10;
const TOPIC = 't';
const ours = sendMessages({
  metadataNotLoaded: (m) => new errors.KafkaJSMetadataNotLoaded(m),
  staleMetadata,
  group: GROUPER as never,
});

type Msg = { partition: number; value: string };
type Produced = { node: string; partition: number; firstSequence: number; values: string[] };
/** What a broker does with one Produce request: answer each partition (an error code), or fail the request. */
type Script = (partitions: number[]) => { codes?: Record<number, number>; fail?: Error; afterMs?: number };

/** Brokers by node id; `leaders` maps each partition to its leader; each metadata refresh applies the next of `moves`. */
class FakeCluster {
  leaders: Record<number, string>;
  moves: Array<Record<number, string | null>> = [];
  readonly produced: Produced[] = [];
  /** Appended records per partition, as the brokers hold them (a request the broker failed appends nothing). */
  readonly log = new Map<number, string[]>();
  private readonly scripts = new Map<string, Script[]>();
  inFlight = 0;
  overlapped = false;

  constructor(leaders: Record<number, string>) {
    this.leaders = { ...leaders };
  }
  /** The next request to `node` goes by `script`. */
  next(node: string, script: Script): void {
    this.scripts.set(node, [...(this.scripts.get(node) ?? []), script]);
  }
  async addMultipleTargetTopics(): Promise<void> {}
  async refreshMetadataIfNecessary(): Promise<void> {}
  async refreshMetadata(): Promise<void> {
    for (const [p, node] of Object.entries(this.moves.shift() ?? {})) {
      if (node === null) delete this.leaders[Number(p)];
      else this.leaders[Number(p)] = node;
    }
  }
  findTopicPartitionMetadata(): Array<{ partitionId: number; leader: number }> {
    return Object.entries(this.leaders).map(([p, node]) => ({ partitionId: Number(p), leader: Number(node) }));
  }
  /** kafkajs 2.2.4's, which leaves out a partition the metadata lacks. */
  findLeaderForPartitions(_topic: string, partitions: Array<number | string>): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const id of partitions) {
      const leader = this.leaders[Number(id)];
      if (leader === undefined) continue;
      out[leader] = [...(out[leader] ?? []), Number(id)];
    }
    return out;
  }
  isConnected(): boolean {
    return true;
  }
  async connect(): Promise<void> {}
  removeBroker(): void {}
  private readonly brokers = new Map<string, object>();
  async findBroker({ nodeId }: { nodeId: string }): Promise<object> {
    const node = String(nodeId);
    let broker = this.brokers.get(node);
    if (broker === undefined) {
      broker = {
        nodeId: Number(node),
        produce: async (r: { topicData: Array<{ partitions: Array<{ partition: number; firstSequence: number; messages: Msg[] }> }> }) => {
          const entries = r.topicData.flatMap((t) => t.partitions);
          const script: Script = this.scripts.get(node)?.shift() ?? (() => ({}));
          const { codes = {}, fail, afterMs = 0 } = script(entries.map((e) => e.partition));
          this.inFlight++;
          if (this.inFlight > 1) this.overlapped = true;
          await new Promise((res) => setTimeout(res, afterMs));
          this.inFlight--;
          for (const e of entries) {
            this.produced.push({ node, partition: e.partition, firstSequence: e.firstSequence, values: e.messages.map((m) => m.value) });
          }
          const response: ProduceResponse = {
            topics: [
              {
                topicName: TOPIC,
                partitions: entries.map((e) => ({ partition: e.partition, errorCode: codes[e.partition] ?? 0, baseOffset: '0' })),
              },
            ],
          };
          if (fail === undefined) {
            for (const e of entries) if ((codes[e.partition] ?? 0) === 0) this.append(e.partition, e.messages);
          }
          if (fail !== undefined) throw fail;
          const refused = response.topics[0]?.partitions.find((p) => p.errorCode !== 0);
          if (refused !== undefined)
            throw Object.defineProperty(createErrorFromCode(refused.errorCode), PRODUCE_RESPONSE, { value: response });
          return response;
        },
      };
      this.brokers.set(node, broker);
    }
    return broker;
  }
  private append(partition: number, messages: Msg[]): void {
    this.log.set(partition, [...(this.log.get(partition) ?? []), ...messages.map((m) => m.value)]);
  }
}

/** A send of `n` messages to each of `partitions`, through `factory`, with an idempotent producer's eosManager. */
async function send(factory: SendMessagesFactory, cluster: FakeCluster, partitions: number[], n = 3) {
  const logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
  const eosManager = createEosManager({
    logger: { ...logger, namespace: () => logger },
    cluster: {
      retry: { retries: 0 },
      refreshMetadataIfNecessary: async () => undefined,
      findControllerBroker: async () => ({ initProducerId: async () => ({ producerId: 7, producerEpoch: 0 }) }),
    },
    transactional: false,
    idempotent: true,
  });
  await eosManager.initProducerId();
  const messages: Msg[] = partitions.flatMap((p) => Array.from({ length: n }, (_, i) => ({ partition: p, value: `p${p}-${i}` })));
  const run = factory({
    logger,
    cluster: cluster as never,
    partitioner: ({ message }: { message: Msg }) => message.partition,
    eosManager: eosManager as never,
    retrier: createRetry({ retries: 5, initialRetryTime: 1, maxRetryTime: 5, factor: 0, multiplier: 1 }),
  });
  const result = await run({ acks: -1, topicMessages: [{ topic: TOPIC, messages }] }).then(
    (answers) => ({ answers, error: null as Error | null }),
    (error: Error) => ({ answers: null, error }),
  );
  return { ...result, sequence: (p: number) => eosManager.getSequence(TOPIC, p) };
}

/** Each partition's appended values, once each and in order, as a send of n per partition should leave them. */
function exactlyOnce(partitions: number[], n = 3): Map<number, string[]> {
  return new Map(partitions.map((p) => [p, Array.from({ length: n }, (_, i) => `p${p}-${i}`)]));
}

const notLeader = () => createErrorFromCode(NOT_LEADER);
const closed = (node: string) => new errors.KafkaJSConnectionClosedError('Connection closed', { host: `b${node}`, port: 9092 });

describe("outboxd's sendMessages, as partition leaders move between a send's attempts", () => {
  it('does not send again a partition whose broker acknowledged it, when it moves to a broker that did not answer', async () => {
    // 1 leads p0 and answers; 2 leads p1 and fails NOT_LEADER, then p0 and p1 both move to 3.
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ codes: { 1: NOT_LEADER } }));
    cluster.moves = [{ 0: '3', 1: '3' }];
    const { error, answers, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(cluster.produced.filter((p) => p.partition === 0)).toHaveLength(1);
    expect(answers?.map((a) => a.partition).sort()).toEqual([0, 1]);
    expect([sequence(0), sequence(1)]).toEqual([3, 3]);
  });

  it('sends a partition that moves to a broker that already answered', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ fail: notLeader() }));
    cluster.moves = [{ 1: '1' }];
    const { error, answers } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(answers?.map((a) => a.partition).sort()).toEqual([0, 1]);
  });

  it('waits for every request of an attempt before the next, and sends a lost answer again with the same sequence numbers', async () => {
    // 2's connection closes at once; 1's answer is slow. The broker appended nothing for 2.
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('1', () => ({ afterMs: 30 }));
    cluster.next('2', () => ({ fail: closed('2') }));
    const { error } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.overlapped).toBe(true); // 1 and 2 at once, within the attempt
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(cluster.produced.filter((p) => p.partition === 0)).toHaveLength(1);
    expect(cluster.produced.filter((p) => p.partition === 1).map((p) => p.firstSequence)).toEqual([0, 0]);
  });

  it('keeps the sequence of a partition the broker appended when another partition of the request is refused', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '1' });
    cluster.next('1', () => ({ codes: { 1: NOT_LEADER } }));
    const { error, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    // p0 once; p1 twice, at the same first sequence (nothing of it was appended the first time).
    expect(cluster.produced.map((p) => [p.partition, p.firstSequence])).toEqual([
      [0, 0],
      [1, 0],
      [1, 0],
    ]);
    expect([sequence(0), sequence(1)]).toEqual([3, 3]);
  });

  it('retries a partition the refreshed metadata has no leader for, rather than dropping it', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ fail: notLeader() }));
    cluster.moves = [{ 1: null }, { 1: '3' }];
    const { error } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
  });

  it("fails with the broker's own refusal when a partition's records are refused for good, and winds back only that partition", async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '1' });
    cluster.next('1', () => ({ codes: { 1: MESSAGE_TOO_LARGE } }));
    const { error, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toMatchObject({ name: 'KafkaJSProtocolError', type: 'MESSAGE_TOO_LARGE', retriable: false });
    expect([sequence(0), sequence(1)]).toEqual([3, 0]);
    expect(cluster.log).toEqual(new Map([[0, ['p0-0', 'p0-1', 'p0-2']]]));
  });
});

describe("kafkajs 2.2.4's own sendMessages, in the same cases (what outboxd's replaces)", () => {
  it('appends a partition twice when it moves from a broker that answered to one that did not', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ codes: { 1: NOT_LEADER } }));
    cluster.moves = [{ 0: '3', 1: '3' }];
    const { error } = await send(kafkajsSendMessages, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log.get(0)).toEqual(['p0-0', 'p0-1', 'p0-2', 'p0-0', 'p0-1', 'p0-2']);
  });

  it('resolves without sending a partition that moved to a broker that had answered', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ fail: notLeader() }));
    cluster.moves = [{ 1: '1' }];
    const { error } = await send(kafkajsSendMessages, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log.get(1)).toBeUndefined();
  });
});
