/**
 * Part of the kafkajs door (kafkajs-internals.ts installs it, after checking kafkajs's version and
 * the shape read here; test/unit/kafkajs-door.test.ts lists the door's files): the transactional
 * producer's coordinator, remembered (docs/adr/0018-transaction-coordinator-cache.md).
 *
 * kafkajs 2.2.4's eosManager (kafkajs/src/producer/eosManager/index.js) asks the cluster for the
 * transaction coordinator, a FindCoordinator round trip, before every InitProducerId,
 * AddPartitionsToTxn, AddOffsetsToTxn and EndTxn, and again on each of its retries of
 * CONCURRENT_TRANSACTIONS: two or more per transaction. The broker that coordinates an id changes
 * only when the leadership of its `__transaction_state` partition moves, and the broker then
 * answers the next request with a coordinator error. So each transactional eosManager here gets a
 * view of the cluster that remembers the coordinator's node id after one FindCoordinator and
 * forgets it:
 * - on any error of a request to it (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
 *   COORDINATOR_LOAD_IN_PROGRESS, a connection error, a timeout, anything) but
 *   CONCURRENT_TRANSACTIONS, which says the coordinator is right and busy;
 * - when the node cannot be reached or the metadata no longer lists it (kafkajs's findBroker
 *   fails: it refreshes the metadata, and the next lookup asks again);
 * - before every InitProducerId (a new producer id or epoch, after a fence or a reset);
 * - with its producer: the exactly-once sink drops the producer after any failure
 *   (transactional-id.ts), and a new producer has a new eosManager, with nothing remembered.
 *
 * Remembering the coordinator takes away the FindCoordinator round trip that used to separate an
 * EndTxn from the next transaction's AddPartitionsToTxn, so the coordinator, still writing the
 * last transaction's markers, answers it CONCURRENT_TRANSACTIONS more often (0.06 → 0.8 times a
 * transaction, measured: test/integration/kafka-coordinator.test.ts). kafkajs retries that by
 * re-running the whole send after a Metadata request; here the AddPartitionsToTxn alone is asked
 * again after about a millisecond, a few times (CONCURRENT_RETRIES), before kafkajs's retry.
 *
 * A send that fails at one broker while another's request is in flight is retried only once that
 * request has settled: kafkajs-send.ts, which replaces kafkajs's sendMessages, sees to that.
 *
 * Nothing here loads kafkajs: installKafkajs() hands it the eosManager factory to wrap.
 */
import { retry } from '../../retry.js';

/** kafkajs's coordinator type for transactions (kafkajs/src/protocol/coordinatorTypes.js). */
export const TRANSACTION_COORDINATOR = 1;
/** The one error of a request to the coordinator that keeps it: it is the coordinator, and busy. */
const KEEPS_COORDINATOR = new Set(['CONCURRENT_TRANSACTIONS']);

/**
 * AddPartitionsToTxn (and AddOffsetsToTxn) attempts on CONCURRENT_TRANSACTIONS before the error
 * goes to kafkajs's own retry: waits of about 1, 2, 4, 8, 16, 16, 16 ms, under 70 ms in all
 * (a transaction must not outlive transactionTimeout in retries; the pipeline retries it whole).
 */
const CONCURRENT_RETRIES = 8;
const CONCURRENT_BACKOFF = { initialMs: 1, maxMs: 16 };
const NEVER = new AbortController().signal;

/** What eosManager sends to the transaction coordinator. */
const COORDINATOR_REQUESTS = ['initProducerId', 'addPartitionsToTxn', 'addOffsetsToTxn', 'endTxn'] as const;
type CoordinatorRequest = (typeof COORDINATOR_REQUESTS)[number];

/** A kafkajs Broker, as eosManager uses a coordinator. */
export type CoordinatorBroker = { nodeId?: number | string | null } & Record<CoordinatorRequest, (r: object) => Promise<unknown>>;

/**
 * What kafkajs 2.2.4's eosManager reads of its Cluster: exactly these members (installKafkajs()
 * checks its source for them), plus findBroker, which the cache uses.
 */
export interface EosCluster {
  retry: unknown;
  refreshMetadataIfNecessary(): Promise<unknown>;
  findControllerBroker(): Promise<unknown>;
  findGroupCoordinator(r: { groupId: string; coordinatorType: number }): Promise<CoordinatorBroker>;
  findBroker(r: { nodeId: string }): Promise<CoordinatorBroker>;
}
/** The members of the Cluster eosManager uses, for the shape check. */
export const EOS_CLUSTER_MEMBERS = ['findControllerBroker', 'findGroupCoordinator', 'refreshMetadataIfNecessary', 'retry'];

type EosOptions = { cluster: EosCluster; transactional?: boolean; transactionalId?: string } & Record<string, unknown>;
type EosManager = { initProducerId(...args: unknown[]): Promise<unknown> } & Record<string, unknown>;
export type EosFactory = (o: EosOptions) => EosManager;

/** Counts across every producer of the process, for tests and measurements. */
export interface CoordinatorCounts {
  /** FindCoordinator lookups made for a transactional id (each is one round trip, or more). */
  lookups: number;
  /** Times a remembered coordinator was used instead. */
  hits: number;
  /** Times a remembered coordinator was forgotten. */
  invalidations: number;
  /** AddPartitionsToTxn or AddOffsetsToTxn asked again after CONCURRENT_TRANSACTIONS. */
  concurrent: number;
}
const counts: CoordinatorCounts = { lookups: 0, hits: 0, invalidations: 0, concurrent: 0 };

export function coordinatorCounts(): Readonly<CoordinatorCounts> {
  return { ...counts };
}

/** Whether an error of a request to the coordinator leaves it the coordinator. */
export function keepsCoordinator(err: unknown): boolean {
  const type = (err as { type?: unknown } | null)?.type;
  return typeof type === 'string' && KEEPS_COORDINATOR.has(type);
}

/** One transactional id's coordinator, remembered by node id. */
export class CoordinatorCache {
  private nodeId: string | null = null;

  constructor(
    /** kafkajs's own lookup: FindCoordinator, then the broker it names. */
    private readonly lookUp: () => Promise<CoordinatorBroker>,
    /** kafkajs's broker by node id, connected; rejects when the metadata has no such node, or it is unreachable. */
    private readonly byNode: (nodeId: string) => Promise<CoordinatorBroker>,
  ) {}

  /** The remembered node, or null. */
  get remembered(): string | null {
    return this.nodeId;
  }

  /** The coordinator: the remembered one if it is still known and reachable, or a fresh lookup. */
  async coordinator(): Promise<CoordinatorBroker> {
    const remembered = this.nodeId;
    if (remembered !== null) {
      try {
        const broker = await this.byNode(remembered);
        counts.hits++;
        return this.watched(broker);
      } catch {
        // Gone from the metadata, or unreachable: kafkajs refreshed its metadata; ask again.
        this.forget();
      }
    }
    counts.lookups++;
    const broker = await this.lookUp();
    this.nodeId = broker.nodeId === null || broker.nodeId === undefined ? null : String(broker.nodeId);
    return this.watched(broker);
  }

  /** Forgets the coordinator: the next request looks it up. */
  forget(): void {
    if (this.nodeId === null) return;
    this.nodeId = null;
    counts.invalidations++;
  }

  /** The broker, with every coordinator request's failure judged (keepsCoordinator). */
  private watched(broker: CoordinatorBroker): CoordinatorBroker {
    const node = broker.nodeId;
    const view = Object.create(null) as CoordinatorBroker;
    view.nodeId = node;
    for (const name of COORDINATOR_REQUESTS) {
      const send = (r: object) =>
        broker[name](r).catch((err: unknown) => {
          // Only if it is still the node this answer came from (a lookup may have replaced it).
          if (!keepsCoordinator(err) && this.nodeId === (node === null || node === undefined ? null : String(node))) this.forget();
          throw err;
        });
      view[name] = name === 'addPartitionsToTxn' || name === 'addOffsetsToTxn' ? (r: object) => untilNotConcurrent(() => send(r)) : send;
    }
    return view;
  }
}

/** `send`, asked again while the coordinator answers CONCURRENT_TRANSACTIONS, up to CONCURRENT_RETRIES times. */
function untilNotConcurrent<T>(send: () => Promise<T>): Promise<T> {
  let attempts = 0;
  return retry(
    () => {
      attempts++;
      counts.concurrent += attempts > 1 ? 1 : 0;
      return send();
    },
    { backoff: CONCURRENT_BACKOFF, signal: NEVER, isRetriable: (err) => keepsCoordinator(err) && attempts < CONCURRENT_RETRIES },
  );
}

/**
 * kafkajs's eosManager factory, with a remembered coordinator for transactional producers (an
 * idempotent producer's eosManager never looks a coordinator up, and is kafkajs's own).
 */
export function rememberingCoordinator(create: EosFactory): EosFactory {
  return (opts) => {
    if (!opts.transactional || typeof opts.transactionalId !== 'string') return create(opts);
    const cluster = opts.cluster;
    const transactionalId = opts.transactionalId;
    const cache = new CoordinatorCache(
      () => cluster.findGroupCoordinator({ groupId: transactionalId, coordinatorType: TRANSACTION_COORDINATOR }),
      (nodeId) => cluster.findBroker({ nodeId }),
    );
    const view: EosCluster = {
      retry: cluster.retry,
      refreshMetadataIfNecessary: () => cluster.refreshMetadataIfNecessary(),
      findControllerBroker: () => cluster.findControllerBroker(),
      findBroker: (r) => cluster.findBroker(r),
      findGroupCoordinator: (r) =>
        r.groupId === transactionalId && r.coordinatorType === TRANSACTION_COORDINATOR
          ? cache.coordinator()
          : cluster.findGroupCoordinator(r),
    };
    const manager = create({ ...opts, cluster: view });
    const init = manager.initProducerId;
    // A new producer id or epoch (a fence, a reset): asked of a coordinator looked up afresh.
    manager.initProducerId = (...args: unknown[]) => {
      cache.forget();
      return init.apply(manager, args);
    };
    return manager;
  };
}
