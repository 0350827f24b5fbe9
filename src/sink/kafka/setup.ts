import type kafkajs from 'kafkajs';
import type { KafkaSinkConfig } from '../../config/config.js';
import { SinkError } from '../../errors.js';
import type { Logger } from '../../observability/logger.js';
import { readCheckpoints } from './exactly-once-checkpoint.js';
import { classify, createKafka, protocolErrorType } from './client.js';
import { installKafkajs } from './kafkajs-internals.js';

/**
 * The exactly-once checkpoint topic's creation (`outboxd setup`, and `run` when it is missing and
 * autoCreateTopics allows it) and checks (`validate --connect`): compacted and nothing else (a
 * delete policy would one day remove the only checkpoint, and the next start would publish
 * everything again), one partition, replicated as configured or as the cluster's defaults say.
 */

export interface TopicCheck {
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** What the checkpoint topic is (or would be) created with: one line for the log, setup and validate. */
export interface CheckpointTopicPlan {
  readonly replicationFactor: number;
  /** null: not set on the topic, which then follows the cluster's min.insync.replicas. */
  readonly minInsyncReplicas: number | null;
  readonly text: string;
}

const COMPACT = 'cleanup.policy=compact';
/** DescribeConfigs' config source of a key nobody set (Kafka's ConfigSource.DEFAULT_CONFIG). */
const DEFAULT_CONFIG = 5;

/**
 * The settings for a new checkpoint topic: the configured replication factor and
 * min.insync.replicas, else what the cluster's operator set (default.replication.factor and
 * min.insync.replicas, as a broker describes them, not Kafka's built-in 1s), else min(3, brokers)
 * and min(2, replication factor), which the line then says.
 */
export async function planCheckpointTopic(admin: kafkajs.Admin, cfg: KafkaSinkConfig): Promise<CheckpointTopicPlan> {
  const { brokers } = await admin.describeCluster();
  let defaults = new Map<string, string>();
  let unread = '';
  try {
    const described = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [
        {
          type: installKafkajs().ConfigResourceTypes.BROKER,
          name: String(brokers[0]?.nodeId ?? ''),
          configNames: ['default.replication.factor', 'min.insync.replicas'],
        },
      ],
    });
    // Only what the cluster's operator set: a key left at Kafka's built-in default reads as its
    // value too (default.replication.factor 1), which would make a one-replica checkpoint topic.
    const set = (e: { isDefault?: boolean; configSource?: number }) => e.isDefault !== true && e.configSource !== DEFAULT_CONFIG;
    defaults = new Map(described.resources[0]?.configEntries.filter(set).map((e) => [e.configName, e.configValue]) ?? []);
  } catch (err) {
    unread = classify(err, 'describing a broker').message;
  }
  const positive = (v: string | undefined) => (v !== undefined && /^[1-9]\d*$/.test(v) ? Number(v) : null);
  const clusterRf = positive(defaults.get('default.replication.factor'));
  const clusterMisr = positive(defaults.get('min.insync.replicas'));
  const configuredRf = cfg.checkpointTopicReplicationFactor;
  const replicationFactor = configuredRf ?? clusterRf ?? Math.min(3, brokers.length);
  const rfFrom =
    configuredRf !== undefined
      ? 'sink.kafka.checkpointTopicReplicationFactor'
      : clusterRf !== null
        ? "the cluster's default.replication.factor"
        : `min(3, ${brokers.length} brokers): the cluster's default.replication.factor is ${unread ? `unknown (${unread})` : "Kafka's built-in 1"}`;
  // Configured, else the cluster's own setting (left off the topic, which follows it), else
  // min(2, replication factor) on the topic, as `outboxd setup` always did.
  const minInsyncReplicas = cfg.checkpointTopicMinInsyncReplicas ?? (clusterMisr === null ? Math.min(2, replicationFactor) : null);
  const misr =
    cfg.checkpointTopicMinInsyncReplicas !== undefined
      ? `min.insync.replicas ${minInsyncReplicas} (sink.kafka.checkpointTopicMinInsyncReplicas)`
      : minInsyncReplicas !== null
        ? `min.insync.replicas ${minInsyncReplicas} (min(2, replication factor): the cluster's is ${unread ? 'unknown' : "Kafka's built-in 1"})`
        : `min.insync.replicas ${clusterMisr} (the cluster's default, not set on the topic)`;
  return {
    replicationFactor,
    minInsyncReplicas,
    text: `1 partition, ${COMPACT}, replication factor ${replicationFactor} (${rfFrom}), ${misr}`,
  };
}

/**
 * Creates the checkpoint topic if it is missing; resolves what it did, as a line's tail. A topic
 * that is there (or that another relay or setup created at the same moment: TOPIC_ALREADY_EXISTS)
 * is checked instead: one that is not compacted alone, or has more than one partition, rejects
 * with a one-line SinkError (not retriable) that says what to fix.
 */
export async function ensureCheckpointTopic(cfg: KafkaSinkConfig, log: Logger): Promise<{ created: boolean; detail: string }> {
  const topic = cfg.checkpointTopic;
  const admin = createKafka(cfg, log).admin();
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(topic)) {
      const plan = await planCheckpointTopic(admin, cfg);
      const created = await admin.createTopics({
        waitForLeaders: true,
        topics: [
          {
            topic,
            numPartitions: 1,
            replicationFactor: plan.replicationFactor,
            configEntries: [
              { name: 'cleanup.policy', value: 'compact' },
              ...(plan.minInsyncReplicas === null ? [] : [{ name: 'min.insync.replicas', value: String(plan.minInsyncReplicas) }]),
            ],
          },
        ],
      });
      if (created) return { created: true, detail: `created: ${plan.text}` };
    }
    const { policy, partitions } = await describeTopic(admin, topic);
    const unfit = unfitness(topic, policy, partitions);
    if (unfit !== null) {
      throw new SinkError('checkpoint_topic_unfit', `checkpoint topic "${topic}" exists but ${unfit}`, { retriable: false });
    }
    return { created: false, detail: 'exists' };
  } catch (err) {
    // createTopics rejects with "Topic creation errors" and the broker's answer inside.
    const inner =
      (err as { name?: string; errors?: unknown[] }).name === 'KafkaJSAggregateError' ? (err as { errors: unknown[] }).errors[0] : err;
    throw classify(inner ?? err, `creating checkpoint topic ${topic}`);
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

/**
 * `run`'s first read of the checkpoint topic in a session, `read`: when the topic is missing,
 * creates it (ensureCheckpointTopic) if sink.kafka.autoCreateTopics allows, and reads again; else
 * rejects with a one-line error that names the topic and `outboxd setup`.
 */
export async function readCreatingCheckpointTopic<T>(cfg: KafkaSinkConfig, log: Logger, read: () => Promise<T>): Promise<T> {
  try {
    return await read();
  } catch (err) {
    if (!(err instanceof SinkError && err.reason === 'checkpoint_topic_missing')) throw err;
    const topic = cfg.checkpointTopic;
    const setup = 'create it with `outboxd setup` (compacted, one partition)';
    if (!cfg.autoCreateTopics) {
      throw new SinkError(
        err.reason,
        `checkpoint topic "${topic}" does not exist and sink.kafka.autoCreateTopics is false: exactly-once needs it; ${setup}`,
        { retriable: false, cause: err },
      );
    }
    const made = await ensureCheckpointTopic(cfg, log).catch((e: unknown) => {
      const failed = classify(e, `creating checkpoint topic ${topic}`);
      if (failed.reason === 'checkpoint_topic_unfit') throw failed;
      throw new SinkError(
        failed.reason,
        `checkpoint topic "${topic}" does not exist and could not be created (${failed.message.replace(`creating checkpoint topic ${topic}: `, '')}); ${setup}`,
        {
          retriable: failed.retriable,
          cause: e,
        },
      );
    });
    const detail = made.created ? made.detail : 'created by another client at the same moment: compacted, one partition';
    log.info({ checkpointTopic: topic }, `exactly-once: checkpoint topic ${topic} ${detail}`);
    return read();
  }
}

/**
 * The topic's cleanup.policy, partition count and replication factor. A topic another client is
 * creating this moment may not show its partitions (or be known) yet: asked again for up to 5 s.
 */
async function describeTopic(admin: kafkajs.Admin, topic: string): Promise<{ policy: string; partitions: number; rf: number }> {
  const until = Date.now() + 5_000;
  for (;;) {
    try {
      const described = await admin.describeConfigs({
        includeSynonyms: false,
        resources: [{ type: installKafkajs().ConfigResourceTypes.TOPIC, name: topic, configNames: ['cleanup.policy'] }],
      });
      const policy = described.resources[0]?.configEntries.find((e) => e.configName === 'cleanup.policy')?.configValue ?? '';
      const [meta] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
      const partitions = meta?.partitions.length ?? 0;
      if (partitions > 0 || Date.now() >= until) return { policy, partitions, rf: meta?.partitions[0]?.replicas.length ?? 0 };
    } catch (err) {
      if (Date.now() >= until || !/UNKNOWN_TOPIC_OR_PARTITION|LEADER_NOT_AVAILABLE/.test(String(protocolErrorType(err)))) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Whether a cleanup.policy is "compact" alone. */
const compactAlone = (policy: string) => policy.trim() === 'compact';

/** Why a checkpoint topic with this policy and partition count is unfit, or null. */
function unfitness(topic: string, policy: string, partitions: number): string | null {
  if (!compactAlone(policy)) {
    return `its cleanup.policy is "${policy}"; it must be "compact" alone (retention would one day delete the checkpoint and the next start would publish everything again): kafka-configs.sh --alter --entity-type topics --entity-name ${topic} --add-config cleanup.policy=compact`;
  }
  if (partitions !== 1) {
    return `it has ${partitions} partitions; it must have exactly 1: delete it (before any checkpoint is written) or set another sink.kafka.checkpointTopic`;
  }
  return null;
}

/**
 * What `validate --connect` reports about exactly-once: the topic's policy and replication, and
 * a transaction that writes to it and aborts (write access, transactional-id access) under the
 * probe id `<transactionalId>.validate`, so a running relay is not fenced; then a read. A missing
 * topic: what `run` would create (autoCreateTopics) or that `outboxd setup` must.
 */
export async function checkCheckpointTopic(cfg: KafkaSinkConfig, log: Logger): Promise<TopicCheck[]> {
  const kafka = createKafka(cfg, log);
  const admin = kafka.admin();
  const topic = cfg.checkpointTopic;
  const out: TopicCheck[] = [];
  try {
    await admin.connect();
    if (!(await admin.listTopics()).includes(topic)) {
      const plan = await planCheckpointTopic(admin, cfg);
      return [
        cfg.autoCreateTopics
          ? {
              name: `checkpoint topic ${topic}`,
              ok: true,
              detail: `does not exist yet; run will create it (or outboxd setup): ${plan.text}`,
            }
          : {
              name: `checkpoint topic ${topic}`,
              ok: false,
              detail: `does not exist and sink.kafka.autoCreateTopics is false: create it with \`outboxd setup\` (${plan.text})`,
            },
      ];
    }
    const { policy, partitions, rf } = await describeTopic(admin, topic);
    out.push({
      name: `checkpoint topic ${topic} cleanup.policy`,
      ok: compactAlone(policy),
      detail: compactAlone(policy)
        ? 'compact'
        : `is "${policy}"; must be "compact" alone (retention would one day delete the checkpoint and the next start would publish everything again)`,
    });
    const want = (await planCheckpointTopic(admin, cfg)).replicationFactor;
    out.push({
      name: `checkpoint topic ${topic} replication`,
      ok: rf >= want && partitions === 1,
      detail: `${partitions} partition(s)${partitions === 1 ? '' : ' (must be 1)'}, replication factor ${rf}${rf >= want ? '' : ` (want ${want})`}`,
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
