import { createRequire } from 'node:module';
import { beforeEach, describe, expect, it } from 'vitest';
import {
  type CoordinatorBroker,
  type EosCluster,
  type EosFactory,
  rememberingCoordinator,
} from '../../src/sink/kafka/kafkajs-coordinator.js';

/**
 * The transactional producer's remembered coordinator (src/sink/kafka/kafkajs-coordinator.ts,
 * docs/adr/0018-transaction-coordinator-cache.md), around kafkajs's own eosManager, over a fake cluster of brokers: when it asks
 * FindCoordinator, and every rule that makes it forget.
 */
const require = createRequire(import.meta.url);
const createEosManager = require('kafkajs/src/producer/eosManager/index.js') as EosFactory;
const { createErrorFromCode } = require('kafkajs/src/protocol/error.js') as { createErrorFromCode(code: number): Error };
const NOT_COORDINATOR = 16;
const COORDINATOR_NOT_AVAILABLE = 15;
const COORDINATOR_LOAD_IN_PROGRESS = 14;
const CONCURRENT_TRANSACTIONS = 51;

type Sent = { node: string; request: string };

/** Brokers 1–3; `coordinator` is whom FindCoordinator names; `fail` makes the next request to a node fail. */
class FakeCluster implements EosCluster {
  readonly retry = { retries: 0 };
  coordinator = '1';
  lookups = 0;
  readonly sent: Sent[] = [];
  readonly gone = new Set<string>();
  private readonly fail = new Map<string, { err: Error; times: number }>();

  /** The next `times` requests to `node` fail with `err`. */
  failNext(node: string, err: Error, times = 1): void {
    this.fail.set(node, { err, times });
  }

  async refreshMetadataIfNecessary(): Promise<void> {}
  async findControllerBroker(): Promise<unknown> {
    return this.broker('1');
  }
  async findGroupCoordinator(r: { groupId: string; coordinatorType: number }): Promise<CoordinatorBroker> {
    expect(r).toEqual({ groupId: 'tx', coordinatorType: 1 });
    this.lookups++;
    return this.broker(this.coordinator);
  }
  async findBroker({ nodeId }: { nodeId: string }): Promise<CoordinatorBroker> {
    if (this.gone.has(nodeId))
      throw Object.assign(new Error(`Broker ${nodeId} not found in the cached metadata`), { name: 'KafkaJSBrokerNotFound' });
    return this.broker(nodeId);
  }
  private broker(node: string): CoordinatorBroker {
    const answer = (request: string) => async () => {
      this.sent.push({ node, request });
      const f = this.fail.get(node);
      if (f) {
        if (--f.times === 0) this.fail.delete(node);
        throw f.err;
      }
      return request === 'initProducerId' ? { producerId: 7, producerEpoch: 0 } : {};
    };
    return {
      nodeId: Number(node),
      initProducerId: answer('initProducerId'),
      addPartitionsToTxn: answer('addPartitionsToTxn'),
      addOffsetsToTxn: answer('addOffsetsToTxn'),
      endTxn: answer('endTxn'),
    };
  }
}

type Manager = {
  acquireBrokerLock(b: { nodeId: number }): Promise<void>;
  releaseBrokerLock(b: { nodeId: number }): Promise<void>;
  initProducerId(): Promise<void>;
  beginTransaction(): void;
  addPartitionsToTransaction(t: Array<{ topic: string; partitions: Array<{ partition: number }> }>): Promise<void>;
  commit(): Promise<void>;
  abort(): Promise<void>;
};

let cluster: FakeCluster;
let manager: Manager;
let partition = 0;

beforeEach(async () => {
  cluster = new FakeCluster();
  const create = rememberingCoordinator(createEosManager);
  manager = create({
    cluster,
    transactional: true,
    transactionalId: 'tx',
    logger: quiet,
    transactionTimeout: 60_000,
  }) as unknown as Manager;
  await manager.initProducerId();
});

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/** One transaction as the exactly-once sink's: AddPartitionsToTxn (a new partition each time), EndTxn. */
async function transaction(): Promise<void> {
  manager.beginTransaction();
  try {
    await manager.addPartitionsToTransaction([{ topic: 't', partitions: [{ partition: partition++ }] }]);
    await manager.commit();
  } catch (err) {
    await manager.abort().catch(() => undefined);
    throw err;
  }
}

const nodesOf = (request: string) => cluster.sent.filter((s) => s.request === request).map((s) => s.node);

describe('the remembered transaction coordinator', () => {
  it('is looked up once for InitProducerId, then not again while it answers', async () => {
    for (let i = 0; i < 5; i++) await transaction();
    expect(cluster.lookups).toBe(1);
    expect(nodesOf('endTxn')).toEqual(['1', '1', '1', '1', '1']);
  });

  it('is kept after CONCURRENT_TRANSACTIONS: the coordinator is right, and busy; AddPartitionsToTxn alone is asked again', async () => {
    cluster.failNext('1', createErrorFromCode(CONCURRENT_TRANSACTIONS), 3);
    await transaction();
    expect(nodesOf('addPartitionsToTxn')).toEqual(['1', '1', '1', '1']);
    expect(cluster.lookups).toBe(1);
  });

  it("hands CONCURRENT_TRANSACTIONS to kafkajs's own retry after 8 attempts, still remembered", async () => {
    cluster.failNext('1', createErrorFromCode(CONCURRENT_TRANSACTIONS), 8);
    await expect(transaction()).rejects.toMatchObject({ type: 'CONCURRENT_TRANSACTIONS' });
    expect(nodesOf('addPartitionsToTxn')).toHaveLength(8);
    await transaction();
    expect(cluster.lookups).toBe(1);
  });

  for (const [name, code] of [
    ['NOT_COORDINATOR', NOT_COORDINATOR],
    ['COORDINATOR_NOT_AVAILABLE', COORDINATOR_NOT_AVAILABLE],
    ['COORDINATOR_LOAD_IN_PROGRESS', COORDINATOR_LOAD_IN_PROGRESS],
  ] as const) {
    it(`is forgotten on ${name}, and the next request goes to the coordinator FindCoordinator names then`, async () => {
      await transaction();
      cluster.failNext('1', createErrorFromCode(code));
      cluster.coordinator = '2';
      await expect(transaction()).rejects.toThrow();
      await transaction();
      await transaction();
      expect(cluster.lookups).toBe(2);
      expect(nodesOf('endTxn')).toEqual(['1', '2', '2']);
    });
  }

  it('is forgotten on a connection error to it, and on a request timeout', async () => {
    for (const err of [
      Object.assign(new Error('Connection error: connect ECONNREFUSED'), { name: 'KafkaJSConnectionError', code: 'ECONNREFUSED' }),
      Object.assign(new Error('Request EndTxn timed out'), { name: 'KafkaJSRequestTimeoutError' }),
    ]) {
      const before = cluster.lookups;
      cluster.failNext(cluster.coordinator, err);
      cluster.coordinator = cluster.coordinator === '1' ? '2' : '1';
      await expect(transaction()).rejects.toThrow(err.message);
      await transaction();
      expect(cluster.lookups).toBe(before + 1);
      expect(nodesOf('endTxn').at(-1)).toBe(cluster.coordinator);
    }
  });

  it('is forgotten when the metadata no longer lists it, or it cannot be reached', async () => {
    await transaction();
    cluster.gone.add('1');
    cluster.coordinator = '3';
    await transaction();
    expect(cluster.lookups).toBe(2);
    expect(nodesOf('addPartitionsToTxn')).toEqual(['1', '3']);
  });

  it('is looked up afresh for every InitProducerId (a fence, a reset, a new epoch)', async () => {
    await transaction();
    cluster.coordinator = '2';
    await manager.initProducerId();
    await transaction();
    expect(cluster.lookups).toBe(2);
    expect(nodesOf('initProducerId')).toEqual(['1', '2']);
    expect(nodesOf('endTxn')).toEqual(['1', '2']);
  });

  it("leaves an idempotent (not transactional) producer's eosManager kafkajs's own", () => {
    const made: unknown[] = [];
    const create = rememberingCoordinator((o) => {
      made.push(o.cluster);
      return { initProducerId: async () => undefined, acquireBrokerLock: async () => undefined, releaseBrokerLock: () => undefined };
    });
    create({ cluster, transactional: false });
    expect(made).toEqual([cluster]);
  });
});
