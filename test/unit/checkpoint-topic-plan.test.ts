import type kafkajs from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { KafkaSinkConfig } from '../../src/config/config.js';
import { planCheckpointTopic } from '../../src/sink/kafka/setup.js';

/**
 * The exactly-once checkpoint topic's settings when outboxd creates it (sink/kafka/setup.ts):
 * configured, else what the cluster's operator set, else min(3, brokers) and min(2, rf). A key
 * the operator never set describes as Kafka's built-in default (default.replication.factor 1):
 * taken for a choice, it made a one-replica checkpoint topic on a three-broker cluster.
 */
type Entry = { configName: string; configValue: string; isDefault: boolean; configSource: number };
const STATIC_BROKER_CONFIG = 4;
const DEFAULT_CONFIG = 5;

function admin(brokers: number, entries: Entry[] | Error): kafkajs.Admin {
  return {
    describeCluster: async () => ({ brokers: Array.from({ length: brokers }, (_, nodeId) => ({ nodeId, host: 'h', port: 9092 })) }),
    describeConfigs: async () => {
      if (entries instanceof Error) throw entries;
      return { resources: [{ configEntries: entries }] };
    },
  } as unknown as kafkajs.Admin;
}

function kafka(extra = ''): KafkaSinkConfig {
  const cfg = parseConfig(
    `postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [127.0.0.1:9092]\n    delivery: exactly-once\n${extra}`,
    {},
  );
  if (cfg.sink.type !== 'kafka') throw new Error('not kafka');
  return cfg.sink.kafka;
}

const builtIn: Entry[] = [
  { configName: 'default.replication.factor', configValue: '1', isDefault: true, configSource: DEFAULT_CONFIG },
  { configName: 'min.insync.replicas', configValue: '1', isDefault: true, configSource: DEFAULT_CONFIG },
];
const operatorSet: Entry[] = [
  { configName: 'default.replication.factor', configValue: '3', isDefault: false, configSource: STATIC_BROKER_CONFIG },
  { configName: 'min.insync.replicas', configValue: '2', isDefault: false, configSource: STATIC_BROKER_CONFIG },
];

describe('the checkpoint topic a relay creates', () => {
  it("never takes Kafka's built-in replication factor of 1 for the cluster's choice", async () => {
    const plan = await planCheckpointTopic(admin(3, builtIn), kafka());
    expect(plan.replicationFactor).toBe(3);
    expect(plan.minInsyncReplicas).toBe(2);
    expect(plan.text).toBe(
      "1 partition, cleanup.policy=compact, replication factor 3 (min(3, 3 brokers): the cluster's default.replication.factor is Kafka's built-in 1), min.insync.replicas 2 (min(2, replication factor): the cluster's is Kafka's built-in 1)",
    );
  });

  it("follows what the cluster's operator set, leaving min.insync.replicas to the cluster", async () => {
    const plan = await planCheckpointTopic(admin(5, operatorSet), kafka());
    expect(plan).toMatchObject({ replicationFactor: 3, minInsyncReplicas: null });
    expect(plan.text).toContain("replication factor 3 (the cluster's default.replication.factor)");
    expect(plan.text).toContain("min.insync.replicas 2 (the cluster's default, not set on the topic)");
  });

  it('takes the configured values over the cluster', async () => {
    const cfg = kafka('    checkpointTopicReplicationFactor: 2\n    checkpointTopicMinInsyncReplicas: 1\n');
    const plan = await planCheckpointTopic(admin(5, operatorSet), cfg);
    expect(plan).toMatchObject({ replicationFactor: 2, minInsyncReplicas: 1 });
  });

  it("says so when it may not read the brokers' configs, and stays within the brokers there are", async () => {
    const plan = await planCheckpointTopic(admin(1, new Error('Cluster authorization failed')), kafka());
    expect(plan).toMatchObject({ replicationFactor: 1, minInsyncReplicas: 1 });
    expect(plan.text).toMatch(/replication factor 1 \(min\(3, 1 brokers\): the cluster's default\.replication\.factor is unknown \(.*\)\)/);
    expect(plan.text).toContain("min.insync.replicas 1 (min(2, replication factor): the cluster's is unknown)");
  });
});
