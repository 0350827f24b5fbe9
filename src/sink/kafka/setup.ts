import type { KafkaSinkConfig } from '../../config/config.js';
import type { Logger } from '../../observability/logger.js';
import { readCheckpoints } from './exactly-once-checkpoint.js';
import { classify, createKafka } from './client.js';
import { installKafkajs } from './kafkajs-internals.js';

/**
 * The exactly-once checkpoint topic's setup (`outboxd setup`) and checks (`validate --connect`):
 * compacted and nothing else (a delete policy would one day remove the only checkpoint, and the
 * next start would publish everything again), one partition, replicated like the data.
 */

export interface TopicCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Creates the checkpoint topic if it is missing. Resolves 'created' or 'exists'. */
export async function ensureCheckpointTopic(cfg: KafkaSinkConfig, log: Logger): Promise<'created' | 'exists'> {
  const admin = createKafka(cfg, log).admin();
  try {
    await admin.connect();
    if ((await admin.listTopics()).includes(cfg.checkpointTopic)) return 'exists';
    const { brokers } = await admin.describeCluster();
    const replicationFactor = Math.min(3, brokers.length);
    await admin.createTopics({
      waitForLeaders: true,
      topics: [
        {
          topic: cfg.checkpointTopic,
          numPartitions: 1,
          replicationFactor,
          configEntries: [
            { name: 'cleanup.policy', value: 'compact' },
            { name: 'min.insync.replicas', value: String(Math.min(2, replicationFactor)) },
          ],
        },
      ],
    });
    return 'created';
  } catch (err) {
    throw classify(err, `creating checkpoint topic ${cfg.checkpointTopic}`);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * What `validate --connect` reports about exactly-once: the topic's policy and replication, and
 * a transaction that writes to it and aborts (write access, transactional-id access) under the
 * probe id `<transactionalId>.validate`, so a running relay is not fenced; then a read.
 */
export async function checkCheckpointTopic(cfg: KafkaSinkConfig, log: Logger): Promise<TopicCheck[]> {
  const kafka = createKafka(cfg, log);
  const admin = kafka.admin();
  const topic = cfg.checkpointTopic;
  const out: TopicCheck[] = [];
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(topic)) {
      return [{ name: `checkpoint topic ${topic}`, ok: false, detail: 'does not exist: create it with `outboxd setup`' }];
    }
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: installKafkajs().ConfigResourceTypes.TOPIC, name: topic, configNames: ['cleanup.policy'] }],
    });
    const policy = described.resources[0]?.configEntries.find((e) => e.configName === 'cleanup.policy')?.configValue ?? '';
    const policies = policy.split(',').map((p) => p.trim());
    out.push({
      name: `checkpoint topic ${topic} cleanup.policy`,
      ok: policies.length === 1 && policies[0] === 'compact',
      detail:
        policies.length === 1 && policies[0] === 'compact'
          ? 'compact'
          : `is "${policy}"; must be "compact" alone (retention would one day delete the checkpoint and the next start would publish everything again)`,
    });
    const [meta] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
    const { brokers } = await admin.describeCluster();
    const rf = meta?.partitions[0]?.replicas.length ?? 0;
    const want = Math.min(3, brokers.length);
    out.push({
      name: `checkpoint topic ${topic} replication`,
      ok: rf >= want,
      detail: `${meta?.partitions.length ?? 0} partition(s), replication factor ${rf}${rf >= want ? '' : ` (want ${want} on ${brokers.length} brokers)`}`,
    });
  } catch (err) {
    out.push({ name: `checkpoint topic ${topic}`, ok: false, detail: classify(err, 'describing it').message });
    return out;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
  const probeId = `${cfg.transactionalId}.validate`;
  const producer = kafka.producer({ transactionalId: probeId, idempotent: true, maxInFlightRequests: 1, transactionTimeout: 10_000 });
  try {
    await producer.connect();
    const txn = await producer.transaction();
    await txn.sendBatch({ acks: -1, topicMessages: [{ topic, messages: [{ key: probeId, value: null, partition: 0 }] }] });
    await txn.abort();
    out.push({ name: `checkpoint topic ${topic} write`, ok: true, detail: `a transaction as "${probeId}" wrote to it and aborted` });
  } catch (err) {
    out.push({ name: `checkpoint topic ${topic} write`, ok: false, detail: classify(err, `a transaction as "${probeId}"`).message });
  } finally {
    await producer.disconnect().catch(() => undefined);
  }
  try {
    await readCheckpoints(kafka, topic, '', cfg.transactionalId, cfg.requestTimeoutMs, 'stable');
    out.push({ name: `checkpoint topic ${topic} read`, ok: true, detail: 'read to its end (read_committed)' });
  } catch (err) {
    out.push({ name: `checkpoint topic ${topic} read`, ok: false, detail: (err as Error).message });
  }
  return out;
}
