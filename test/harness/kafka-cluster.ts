/**
 * A throwaway multi-node Apache Kafka 4.x cluster on loopback for tests: N combined
 * broker+controller KRaft nodes (node ids 1..N, a static quorum of all N), each a KafkaServer of
 * kafka.ts with its own ports and dir, replicated as production runs transactions: every topic
 * and internal topic on 3 replicas (or N, if fewer), min.insync.replicas 2. A node can be
 * stopped and started again; the cluster keeps serving while a majority runs.
 */
import { Kafka, logLevel } from 'kafkajs';
import { type KafkaServer, KafkaServerImpl, clusterId, kafkaLibs, warmUpKafka } from './kafka.js';
import { getFreePort, retryOnPortClash } from './ports.js';
import { ServiceDir } from './proc.js';

const HOST = '127.0.0.1';

export interface KafkaCluster {
  /** `await using` destroys it. */
  [Symbol.asyncDispose](): Promise<void>;
  /** Every node's PLAINTEXT address, node 1 first. */
  brokers: string[];
  /** The node with node.id `id` (1..N). */
  node(id: number): KafkaServer;
  /**
   * The node that leads `topic`'s `partition` now (for `__transaction_state`: the transaction
   * coordinator of every transactional id that hashes to it), asked of a running node.
   */
  leaderOf(topic: string, partition: number): Promise<number>;
  destroy(): Promise<void>;
}

/**
 * Starts `nodes` (default 3) KRaft nodes together (a controller quorum needs a majority up),
 * resolves once every node is registered and the cluster served a transaction and a group
 * lookup. One partition for `__transaction_state` and `__consumer_offsets`, as the single broker
 * has: its leader coordinates every transactional id.
 */
export async function startKafkaCluster(opts: { nodes?: number } = {}): Promise<KafkaCluster> {
  const n = opts.nodes ?? 3;
  const libs = await kafkaLibs();
  return retryOnPortClash(async () => {
    const ports: Array<{ broker: number; controller: number }> = [];
    for (let i = 0; i < n; i++) ports.push({ broker: await getFreePort(HOST), controller: await getFreePort(HOST) });
    const voters = ports.map((p, i) => `${i + 1}@${HOST}:${p.controller}`).join(',');
    const replicas = String(Math.min(3, n));
    const minIsr = String(Math.min(2, n));
    const props = {
      'default.replication.factor': replicas,
      'min.insync.replicas': minIsr,
      'offsets.topic.replication.factor': replicas,
      'transaction.state.log.replication.factor': replicas,
      'transaction.state.log.min.isr': minIsr,
      'share.coordinator.state.topic.replication.factor': replicas,
      'share.coordinator.state.topic.min.isr': minIsr,
    };
    const id = clusterId();
    const servers: KafkaServerImpl[] = [];
    try {
      for (let i = 0; i < n; i++) {
        const sd = await ServiceDir.create(`kafka-${i + 1}`, 'SIGKILL');
        const node = { id: i + 1, voters, clusterId: id, props, heap: '384m' };
        const server = new KafkaServerImpl(libs, (ports[i] as { broker: number }).broker, sd, 'test', {}, node);
        servers.push(server);
        await server.init((ports[i] as { controller: number }).controller);
      }
      await Promise.all(servers.map((s) => s.start()));
      const brokers = servers.flatMap((s) => s.brokers);
      await warmUpKafka(brokers);
      return new ClusterImpl(servers, brokers);
    } catch (err) {
      await Promise.all(servers.map((s) => s.destroy().catch(() => undefined)));
      throw err;
    }
  });
}

class ClusterImpl implements KafkaCluster {
  constructor(
    private readonly servers: KafkaServerImpl[],
    readonly brokers: string[],
  ) {}

  node(id: number): KafkaServer {
    const s = this.servers[id - 1];
    if (!s) throw new Error(`no kafka node ${id} (nodes 1..${this.servers.length})`);
    return s;
  }

  async leaderOf(topic: string, partition: number): Promise<number> {
    const kafka = new Kafka({
      clientId: 'outboxd-harness-cluster',
      brokers: this.brokers,
      logLevel: logLevel.NOTHING,
      connectionTimeout: 1000,
    });
    const admin = kafka.admin();
    try {
      await admin.connect();
      const { topics } = await admin.fetchTopicMetadata({ topics: [topic] });
      const leader = topics[0]?.partitions.find((p) => p.partitionId === partition)?.leader;
      if (leader === undefined || leader < 0) throw new Error(`${topic}/${partition} has no leader now`);
      return leader;
    } finally {
      await admin.disconnect().catch(() => undefined);
    }
  }

  async destroy(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.destroy()));
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.destroy();
  }
}
