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
  beginTransaction(): void;
  getSequence(t: string, p: number): number;
  /** Adds `by`; kafkajs sets 0 instead once the sum reaches INT32's max. */
  updateSequence(t: string, p: number, by: number): void;
};
const kafkajsSendMessages = require('kafkajs/src/producer/sendMessages.js') as SendMessagesFactory;

const NOT_LEADER = 6;
const MESSAGE_TOO_LARGE = 10;
const OUT_OF_ORDER_SEQUENCE_NUMBER = 45;
const DUPLICATE_SEQUENCE_NUMBER = 46;
const TOPIC = 't';
const ours = sendMessages({
  metadataNotLoaded: (m) => new errors.KafkaJSMetadataNotLoaded(m),
  staleMetadata,
  errorOf: createErrorFromCode,
  group: GROUPER as never,
});

type Msg = { partition: number; value: string };
type Produced = { node: string; partition: number; firstSequence: number; values: string[] };
/**
 * What a broker does with one Produce request: refuse partitions (an error code, nothing
 * appended), fail the request before anything is appended (`fail`) or after the broker appended
 * (`failAfter`: the answer is lost), leave partitions out of its answer, answer after `afterMs`.
 */
type Script = (partitions: number[]) => {
  codes?: Record<number, number>;
  fail?: Error;
  failAfter?: Error;
  omit?: number[];
  afterMs?: number;
};

/** Brokers by node id; `leaders` maps each partition to its leader; each metadata refresh applies the next of `moves`. */
class FakeCluster {
  leaders: Record<number, string>;
  moves: Array<Record<number, string | null>> = [];
  readonly produced: Produced[] = [];
  /** Appended records per partition, as the brokers hold them (a request the broker failed appends nothing). */
  readonly log = new Map<number, string[]>();
  private readonly scripts = new Map<string, Script[]>();
  /** Per partition, as a broker keeps it for the producer: the next sequence, and the last batch's first and count. */
  private readonly sequences = new Map<number, { next: number; last: [number, number] | null }>();
  /** Sends in flight through the fake, and whether two of them overlapped. */
  inFlight = 0;

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
          const { codes = {}, fail, failAfter, omit = [], afterMs = 0 } = script(entries.map((e) => e.partition));
          this.inFlight++;
          await new Promise((res) => setTimeout(res, afterMs));
          this.inFlight--;
          for (const e of entries) {
            this.produced.push({ node, partition: e.partition, firstSequence: e.firstSequence, values: e.messages.map((m) => m.value) });
          }
          if (fail !== undefined) throw fail;
          const answered = entries.map((e) => ({
            partition: e.partition,
            errorCode: codes[e.partition] ?? this.append(e.partition, e.firstSequence, e.messages),
            baseOffset: '0',
          }));
          if (failAfter !== undefined) throw failAfter;
          const response: ProduceResponse = {
            topics: [{ topicName: TOPIC, partitions: answered.filter((a) => !omit.includes(a.partition)) }],
          };
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
  /** The broker expects `next` as the partition's next sequence. */
  seed(partition: number, next: number): void {
    this.sequences.set(partition, { next, last: null });
  }
  /** Appends a batch as an idempotent broker does: 0, or a duplicate held already (0, nothing appended), or OUT_OF_ORDER_SEQUENCE_NUMBER. */
  private append(partition: number, first: number, messages: Msg[]): number {
    const state = this.sequences.get(partition) ?? { next: 0, last: null };
    this.sequences.set(partition, state);
    if (state.last !== null && state.last[0] === first && state.last[1] === messages.length) return 0;
    if (first !== state.next) return OUT_OF_ORDER_SEQUENCE_NUMBER;
    state.next = (first + messages.length) % 2 ** 31;
    state.last = [first, messages.length];
    this.log.set(partition, [...(this.log.get(partition) ?? []), ...messages.map((m) => m.value)]);
    return 0;
  }
}

/** A producer: `factory`'s send over `cluster`, with an idempotent producer's eosManager (kafkajs's). */
async function producer(factory: SendMessagesFactory, cluster: FakeCluster, transactional = false) {
  const logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };
  /** The partitions each AddPartitionsToTxn asked the coordinator to add. */
  const added: number[][] = [];
  const coordinator = {
    initProducerId: async () => ({ producerId: 7, producerEpoch: 0 }),
    addPartitionsToTxn: async (r: { topics: Array<{ partitions: number[] }> }) => {
      added.push(r.topics.flatMap((t) => t.partitions));
    },
  };
  const eosManager = createEosManager({
    logger: { ...logger, namespace: () => logger },
    cluster: {
      retry: { retries: 0 },
      refreshMetadataIfNecessary: async () => undefined,
      findControllerBroker: async () => coordinator,
      findGroupCoordinator: async () => coordinator,
    },
    transactional,
    transactionalId: transactional ? 'tx' : undefined,
  });
  await eosManager.initProducerId();
  if (transactional) eosManager.beginTransaction();
  const run = factory({
    logger,
    cluster: cluster as never,
    partitioner: ({ message }: { message: Msg }) => message.partition,
    eosManager: eosManager as never,
    retrier: createRetry({ retries: 5, initialRetryTime: 1, maxRetryTime: 5, factor: 0, multiplier: 1 }),
  });
  /** Sends `n` messages to each of `partitions` (values p<partition>-<from + i>). */
  const send = (partitions: number[], n = 3, from = 0) => {
    const messages: Msg[] = partitions.flatMap((p) => Array.from({ length: n }, (_, i) => ({ partition: p, value: `p${p}-${from + i}` })));
    return run({ acks: -1, topicMessages: [{ topic: TOPIC, messages }] }).then(
      (answers) => ({ answers, error: null as Error | null }),
      (error: Error) => ({ answers: null, error }),
    );
  };
  return {
    send,
    added,
    sequence: (p: number) => eosManager.getSequence(TOPIC, p),
    setSequence: (p: number, to: number) => eosManager.updateSequence(TOPIC, p, to - eosManager.getSequence(TOPIC, p)),
  };
}

/** One send of `n` messages to each of `partitions`, on a new producer. */
async function send(factory: SendMessagesFactory, cluster: FakeCluster, partitions: number[], n = 3) {
  const p = await producer(factory, cluster);
  return { ...(await p.send(partitions, n)), sequence: p.sequence };
}

/** Each partition's appended values, once each and in order, as a send of n per partition should leave them. */
function exactlyOnce(partitions: number[], n = 3): Map<number, string[]> {
  return new Map(partitions.map((p) => [p, Array.from({ length: n }, (_, i) => `p${p}-${i}`)]));
}

const notLeader = () => createErrorFromCode(NOT_LEADER);
const closed = (node: string) => new errors.KafkaJSConnectionClosedError('Connection closed', { host: `b${node}`, port: 9092 });

/** Broker 1 leads p0 and answers; 2 refuses p1 NOT_LEADER; then both move to 3 (p0 away from a broker that answered). */
function movedAway(): FakeCluster {
  const cluster = new FakeCluster({ 0: '1', 1: '2' });
  cluster.next('2', () => ({ codes: { 1: NOT_LEADER } }));
  cluster.moves = [{ 0: '3', 1: '3' }];
  return cluster;
}

/** Broker 1 leads p0 and answers; 2 fails NOT_LEADER; then p1 moves to 1 (to a broker that answered). */
function movedToAnswered(): FakeCluster {
  const cluster = new FakeCluster({ 0: '1', 1: '2' });
  cluster.next('2', () => ({ fail: notLeader() }));
  cluster.moves = [{ 1: '1' }];
  return cluster;
}

describe("outboxd's sendMessages, as partition leaders move between a send's attempts", () => {
  it('does not send again a partition whose broker acknowledged it, when it moves to a broker that did not answer', async () => {
    // 1 leads p0 and answers; 2 leads p1 and fails NOT_LEADER, then p0 and p1 both move to 3.
    const cluster = movedAway();
    const { error, answers, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(cluster.produced.filter((p) => p.partition === 0)).toHaveLength(1);
    expect(answers?.map((a) => a.partition).sort()).toEqual([0, 1]);
    expect([sequence(0), sequence(1)]).toEqual([3, 3]);
  });

  it('sends a partition that moves to a broker that already answered', async () => {
    const cluster = movedToAnswered();
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
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(cluster.produced.filter((p) => p.partition === 0)).toHaveLength(1);
    expect(cluster.produced.filter((p) => p.partition === 1).map((p) => p.firstSequence)).toEqual([0, 0]);
  });

  it.each([
    ['refused when another partition of the request was appended', { codes: { 1: NOT_LEADER } }],
    ['left out of the answer', { omit: [1] }],
  ] as Array<[string, ReturnType<Script>]>)(
    'sends again, with the same sequence numbers, a partition %s; the appended one keeps its own',
    async (_, answer) => {
      const cluster = new FakeCluster({ 0: '1', 1: '1' });
      cluster.next('1', () => answer);
      const { error, sequence, answers } = await send(ours, cluster, [0, 1]);
      expect(error).toBeNull();
      expect(cluster.log).toEqual(exactlyOnce([0, 1]));
      // p0 once; p1 twice, at the same first sequence (nothing of it was appended the first time).
      expect(cluster.produced.map((p) => [p.partition, p.firstSequence])).toEqual([
        [0, 0],
        [1, 0],
        [1, 0],
      ]);
      expect([sequence(0), sequence(1)]).toEqual([3, 3]);
      expect(answers?.map((a) => a.partition).sort()).toEqual([0, 1]);
    },
  );

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

describe("outboxd's sendMessages in a transaction", () => {
  it('adds each partition to the transaction once, and appends it once, as leaders move', async () => {
    const cluster = movedAway();
    const p = await producer(ours, cluster, true);
    const { error } = await p.send([0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(p.added.flat().sort()).toEqual([0, 1]);
  });
});

describe("outboxd's sendMessages, when an answer is lost or partial", () => {
  it('sends again, with the same sequence numbers, what the broker appended before the connection dropped: held once', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '2' });
    cluster.next('2', () => ({ failAfter: closed('2') }));
    const { error, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log).toEqual(exactlyOnce([0, 1]));
    expect(cluster.produced.filter((p) => p.partition === 1).map((p) => p.firstSequence)).toEqual([0, 0]);
    expect([sequence(0), sequence(1)]).toEqual([3, 3]);
  });

  it('counts DUPLICATE_SEQUENCE_NUMBER as held, and fails with the refusal of a partition refused beside it', async () => {
    const cluster = new FakeCluster({ 0: '1', 1: '1' });
    cluster.next('1', () => ({ codes: { 0: DUPLICATE_SEQUENCE_NUMBER, 1: MESSAGE_TOO_LARGE } }));
    const { error, sequence } = await send(ours, cluster, [0, 1]);
    expect(error).toMatchObject({ type: 'MESSAGE_TOO_LARGE', retriable: false });
    expect([sequence(0), sequence(1)]).toEqual([3, 0]);
    const alone = new FakeCluster({ 0: '1' });
    alone.next('1', () => ({ codes: { 0: DUPLICATE_SEQUENCE_NUMBER } }));
    const held = await send(ours, alone, [0]);
    expect(held.error).toBeNull();
    expect(held.sequence(0)).toBe(3);
  });

  it("winds a partition back to its request's first sequence where kafkajs wrapped it to 0", async () => {
    const cluster = new FakeCluster({ 0: '1' });
    const near = 2 ** 31 - 1 - 3;
    cluster.seed(0, near);
    cluster.next('1', () => ({ fail: closed('1') }));
    const p = await producer(ours, cluster);
    p.setSequence(0, near);
    const { error } = await p.send([0]);
    expect(error).toBeNull();
    expect(cluster.produced.map((x) => x.firstSequence)).toEqual([near, near]);
    expect(cluster.log).toEqual(exactlyOnce([0]));
  });

  it('counts sequences past INT32 max on from 0, as the broker does', async () => {
    const cluster = new FakeCluster({ 0: '1' });
    const near = 2 ** 31 - 2;
    cluster.seed(0, near);
    const p = await producer(ours, cluster);
    p.setSequence(0, near);
    expect((await p.send([0], 3, 0)).error).toBeNull();
    expect(p.sequence(0)).toBe(1);
    expect((await p.send([0], 3, 3)).error).toBeNull();
    expect(cluster.produced.map((x) => x.firstSequence)).toEqual([near, 1]);
    expect(cluster.log.get(0)).toHaveLength(6);
  });

  it("runs a producer's sends one at a time, so a wound-back sequence is never another send's", async () => {
    // The first send's request appends, then its connection drops (so its sequence is wound
    // back and sent again); a second send of other records starts meanwhile.
    const cluster = new FakeCluster({ 0: '1' });
    cluster.next('1', () => ({ failAfter: closed('1'), afterMs: 20 }));
    const p = await producer(ours, cluster);
    const [a, b] = await Promise.all([p.send([0], 3, 0), p.send([0], 3, 3)]);
    expect([a.error, b.error]).toEqual([null, null]);
    expect(cluster.log.get(0)).toEqual(['p0-0', 'p0-1', 'p0-2', 'p0-3', 'p0-4', 'p0-5']);
    expect(p.sequence(0)).toBe(6);
  });
});

describe("kafkajs 2.2.4's own sendMessages, in the same cases (what outboxd's replaces)", () => {
  it('appends a partition twice when it moves from a broker that answered to one that did not', async () => {
    const cluster = movedAway();
    const { error } = await send(kafkajsSendMessages, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log.get(0)).toEqual(['p0-0', 'p0-1', 'p0-2', 'p0-0', 'p0-1', 'p0-2']);
  });

  it('resolves without sending a partition that moved to a broker that had answered', async () => {
    const cluster = movedToAnswered();
    const { error } = await send(kafkajsSendMessages, cluster, [0, 1]);
    expect(error).toBeNull();
    expect(cluster.log.get(1)).toBeUndefined();
  });
});
