import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import kafkajs from 'kafkajs';
import { parseAllDocuments } from 'yaml';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import type { KafkaSinkConfig } from '../../src/config/config.js';
import { createLogger } from '../../src/observability/logger.js';
import { missingCheckpointTopic } from '../../src/sink/kafka/exactly-once-checkpoint.js';
import { ensureCheckpointTopic, readCreatingCheckpointTopic } from '../../src/sink/kafka/setup.js';
import { getFreePort } from '../harness/ports.js';
import { kafkaBrokers } from '../harness/services.js';
import { MAIN, type OutboxRow, ROOT, RelayProcess, helmBinary, until, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, orderAndDuplicates, waitDelivered } from './fixtures.js';

/**
 * Exactly-once with no manual step (issue 23): `delivery: exactly-once` on a broker where the
 * checkpoint topic does not exist and `outboxd setup` never ran. The relay creates the topic at
 * start when sink.kafka.autoCreateTopics allows (compacted, one partition, the cluster's
 * default replication), and says what it would create under `validate --connect`.
 */

/** autoCreateTopics from OUTBOXD_TEST_AUTO_CREATE (default true), so one bundle tries both. */
const AUTO_CREATE = '    autoCreateTopics: ${OUTBOXD_TEST_AUTO_CREATE:-true}\n';

function eos(sinkExtra = AUTO_CREATE): Promise<Bundle> {
  return bundle({ kind: 'kafka', exactlyOnce: true, sinkExtra });
}

async function withAdmin<T>(f: (admin: kafkajs.Admin) => Promise<T>): Promise<T> {
  const admin = new kafkajs.Kafka({ brokers: await kafkaBrokers(), logLevel: kafkajs.logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    return await f(admin);
  } finally {
    await admin.disconnect();
  }
}

/** The topic as the broker describes it: its cleanup.policy, min.insync.replicas (and whether set on the topic), partitions, replicas. */
function describeTopic(topic: string) {
  return withAdmin(async (admin) => {
    const d = await admin.describeConfigs({
      includeSynonyms: false,
      resources: [{ type: kafkajs.ConfigResourceTypes.TOPIC, name: topic, configNames: ['cleanup.policy', 'min.insync.replicas'] }],
    });
    const entry = (name: string) => d.resources[0]?.configEntries.find((e) => e.configName === name);
    const [meta] = (await admin.fetchTopicMetadata({ topics: [topic] })).topics;
    return {
      policy: entry('cleanup.policy')?.configValue,
      minInsync: entry('min.insync.replicas')?.configValue,
      // ConfigSource 1: DYNAMIC_TOPIC_CONFIG, a value set on the topic itself.
      minInsyncOnTopic: (entry('min.insync.replicas') as { configSource?: number } | undefined)?.configSource === 1,
      partitions: meta?.partitions.length,
      replicas: meta?.partitions[0]?.replicas.length,
    };
  });
}

const exists = (topic: string) => withAdmin(async (admin) => (await admin.listTopics()).includes(topic));

const configYaml = (topic: string, extra = '') => `postgres:
  url: postgres://unused@127.0.0.1/unused
  slot: unused
outbox:
  tables:
    - name: public.outbox
sink:
  type: kafka
  kafka:
    brokers: "${'${KAFKA_BROKERS}'}"
    delivery: exactly-once
    checkpointTopic: ${topic}
    requestTimeout: 10s
${extra}`;

async function kafkaConfig(topic: string, extra = ''): Promise<KafkaSinkConfig> {
  const cfg = parseConfig(configYaml(topic, extra), { KAFKA_BROKERS: (await kafkaBrokers()).join(',') });
  if (cfg.sink.type !== 'kafka') throw new Error('not a kafka sink');
  return cfg.sink.kafka;
}

describe('exactly-once with no manual step: the checkpoint topic', () => {
  it('missing and never set up: run creates it (compacted, 1 partition, the cluster default replication); each event once to a read_committed consumer, across a SIGKILL', async () => {
    await using b = await eos();
    const topic = `ckpt_new_${b.db.slot}`;
    const env = { OUTBOXD_TEST_CHECKPOINT_TOPIC: topic };
    expect(await exists(topic)).toBe(false);

    let relay = b.start(env);
    await relay.ready();
    const all: OutboxRow[] = [];
    all.push(...(await writeOutbox(b.db.client, { total: 1_000, keys: 50, types: b.types, batch: 100, keyPrefix: 'first-' })));
    await waitDelivered(
      b.reader,
      all.map((r) => r.id),
      120_000,
    );
    expect(relay.stderr).toContain(
      `exactly-once: checkpoint topic ${topic} created: 1 partition, cleanup.policy=compact, replication factor 1 (the cluster's default.replication.factor), min.insync.replicas 1 (the cluster's default, not set on the topic)`,
    );
    expect(relay.stderr).toMatch(/no checkpoint yet/);

    // A SIGKILL mid-stream: the next start reads the checkpoint in the topic it created and skips
    // what it proves published.
    const writer = writeOutbox(b.db.client, { total: 3_000, keys: 50, types: b.types, batch: 50, keyPrefix: 'second-' });
    await until('the relay publishing the second write', async () => b.reader.delivered().length >= all.length + 100, 60_000, 20);
    relay.kill('SIGKILL');
    expect(await relay.exited).toBe(-1);
    relay = b.start(env);
    await relay.ready();
    all.push(...(await writer));
    await waitDelivered(
      b.reader,
      all.map((r) => r.id),
      180_000,
    );
    await b.reader.caughtUp();
    expect(relay.stderr).toMatch(/resuming after the checkpoint/);
    expect(relay.stderr).not.toContain(`checkpoint topic ${topic} created`);
    const got = b.reader.delivered();
    const { violations, duplicates } = orderAndDuplicates(got);
    const ids = new Set(got.map((d) => d.id));
    expect(all.filter((r) => !ids.has(r.id)).length, 'lost').toBe(0);
    expect(duplicates).toBe(0);
    expect(violations).toEqual([]);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);

    expect(await describeTopic(topic)).toEqual({ policy: 'compact', minInsync: '1', minInsyncOnTopic: false, partitions: 1, replicas: 1 });
  }, 300_000);

  it('autoCreateTopics false: run stops with one line naming the topic, the key and outboxd setup, and creates nothing; validate --connect says what it would create', async () => {
    await using b = await eos();
    const topic = `ckpt_absent_${b.db.slot}`;
    const env = { OUTBOXD_TEST_CHECKPOINT_TOPIC: topic };

    const relay = b.start({ ...env, OUTBOXD_TEST_AUTO_CREATE: 'false' });
    expect(await relay.exited).toBe(1);
    const fatal = String(relay.logLines().find((l) => l.level === 'fatal')?.msg);
    expect(fatal).toBe(
      `checkpoint topic "${topic}" does not exist and sink.kafka.autoCreateTopics is false: exactly-once needs it; create it with \`outboxd setup\` (compacted, one partition)`,
    );
    expect(b.reader.delivered()).toEqual([]);
    expect(await exists(topic)).toBe(false);

    const validate = (extra: NodeJS.ProcessEnv) =>
      spawnSync(process.execPath, [MAIN, 'validate', '-c', b.configFile, '--connect'], {
        encoding: 'utf8',
        env: { ...process.env, ...env, ...extra },
        timeout: 90_000,
      });
    const settings =
      "1 partition, cleanup.policy=compact, replication factor 1 (the cluster's default.replication.factor), min.insync.replicas 1 (the cluster's default, not set on the topic)";
    const would = validate({});
    expect(would.stdout).toContain(
      `ok    checkpoint topic ${topic}: does not exist yet; run will create it (or outboxd setup): ${settings}`,
    );
    expect(would.stdout).not.toMatch(/fail +checkpoint/);
    const refused = validate({ OUTBOXD_TEST_AUTO_CREATE: 'false' });
    expect(refused.stdout).toContain(
      `fail  checkpoint topic ${topic}: does not exist and sink.kafka.autoCreateTopics is false: create it with \`outboxd setup\` (${settings})`,
    );
    expect(refused.status).not.toBe(0);
    // validate changes nothing.
    expect(await exists(topic)).toBe(false);
  }, 240_000);

  it('two creators at once: one creates it, the other finds it; configured replication and min.insync.replicas; an unfit topic already there is a one-line error', async () => {
    const tag = Math.random().toString(36).slice(2, 10);
    const topic = `ckpt_race_${tag}`;
    const cfg = await kafkaConfig(topic, '    checkpointTopicReplicationFactor: 1\n    checkpointTopicMinInsyncReplicas: 1\n');
    const log = createLogger('silent');
    const both = await Promise.all([ensureCheckpointTopic(cfg, log), ensureCheckpointTopic(cfg, log)]);
    expect(both.filter((r) => r.created)).toEqual([
      {
        created: true,
        detail:
          'created: 1 partition, cleanup.policy=compact, replication factor 1 (sink.kafka.checkpointTopicReplicationFactor), min.insync.replicas 1 (sink.kafka.checkpointTopicMinInsyncReplicas)',
      },
    ]);
    expect(both.filter((r) => !r.created)).toEqual([{ created: false, detail: 'exists' }]);
    expect(await describeTopic(topic)).toEqual({ policy: 'compact', minInsync: '1', minInsyncOnTopic: true, partitions: 1, replicas: 1 });

    await withAdmin((admin) =>
      admin.createTopics({
        topics: [
          { topic: `ckpt_wide_${tag}`, numPartitions: 3, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] },
          { topic: `ckpt_delete_${tag}`, numPartitions: 1, configEntries: [{ name: 'cleanup.policy', value: 'delete' }] },
        ],
      }),
    );
    const wide = await ensureCheckpointTopic(await kafkaConfig(`ckpt_wide_${tag}`), log).catch((e: Error) => e);
    expect(String((wide as Error).message)).toBe(
      `checkpoint topic "ckpt_wide_${tag}" exists but it has 3 partitions; it must have exactly 1: delete it (before any checkpoint is written) or set another sink.kafka.checkpointTopic`,
    );
    const deleting = await ensureCheckpointTopic(await kafkaConfig(`ckpt_delete_${tag}`), log).catch((e: Error) => e);
    expect(String((deleting as Error).message)).toMatch(
      new RegExp(
        `^checkpoint topic "ckpt_delete_${tag}" exists but its cleanup.policy is "delete"; it must be "compact" alone .*--add-config cleanup.policy=compact$`,
      ),
    );

    // A topic the broker will not create (a replication factor above its one broker): the start's
    // error says so in one line, and names outboxd setup.
    const tooWide = await kafkaConfig(`ckpt_rf3_${tag}`, '    checkpointTopicReplicationFactor: 3\n');
    const refused = await readCreatingCheckpointTopic(tooWide, log, () =>
      Promise.reject(missingCheckpointTopic(tooWide.checkpointTopic)),
    ).catch((e: Error) => e);
    expect(String((refused as Error).message)).toMatch(
      new RegExp(
        `^checkpoint topic "ckpt_rf3_${tag}" does not exist and could not be created \\(.*INVALID_REPLICATION_FACTOR.*\\); create it with \`outboxd setup\` \\(compacted, one partition\\)$`,
      ),
    );
    expect(await exists(`ckpt_rf3_${tag}`)).toBe(false);
    await withAdmin((admin) => admin.deleteTopics({ topics: [topic, `ckpt_wide_${tag}`, `ckpt_delete_${tag}`] }));
  }, 120_000);
  it('the Helm chart with delivery: exactly-once turned on (no setup job): the config it renders runs, creates the topic and delivers each event once', async () => {
    await using b = await eos();
    const topic = `ckpt_helm_${b.db.slot}`;
    const port = await getFreePort();
    const dir = mkdtempSync(join(tmpdir(), 'outboxd-eos-helm-'));
    try {
      // The chart's own defaults (publication, tables, log, shutdown) and a Kafka sink with
      // exactly-once on; the checkpoint topic named only to keep this test's own.
      const values = {
        http: { port },
        config: {
          postgres: { url: b.db.url, slot: b.db.slot },
          sink: { type: 'kafka', kafka: { brokers: await kafkaBrokers(), delivery: 'exactly-once', checkpointTopic: topic } },
        },
      };
      writeFileSync(join(dir, 'values.json'), JSON.stringify(values));
      const r = spawnSync(helmBinary(), ['template', 'rel', join(ROOT, 'helm/outboxd'), '-f', join(dir, 'values.json')], {
        encoding: 'utf8',
        env: { PATH: process.env.PATH, HOME: dir, HELM_CACHE_HOME: join(dir, 'cache'), HELM_CONFIG_HOME: join(dir, 'config') },
      });
      expect(r.status, r.stderr).toBe(0);
      const objects = parseAllDocuments(r.stdout).map((d) => d.toJS() as { kind?: string; data?: Record<string, string> } | null);
      // No setup Job or hook: the relay alone makes the topic.
      expect(objects.filter((o) => o?.kind === 'Job')).toEqual([]);
      const configText = Object.values(objects.find((o) => o?.kind === 'ConfigMap')?.data ?? {})[0] as string;
      expect(configText).toMatch(/delivery: exactly-once/);
      writeFileSync(join(dir, 'outboxd.yaml'), configText);
      expect(await exists(topic)).toBe(false);

      const relay = new RelayProcess(join(dir, 'outboxd.yaml'), port);
      try {
        await relay.ready();
        const rows = await writeOutbox(b.db.client, { total: 500, keys: 20, types: b.types, batch: 50 });
        await waitDelivered(
          b.reader,
          rows.map((x) => x.id),
          120_000,
        );
        await b.reader.caughtUp();
        const { duplicates, violations } = orderAndDuplicates(b.reader.delivered());
        expect(duplicates).toBe(0);
        expect(violations).toEqual([]);
        expect(b.reader.delivered().length).toBe(rows.length);
        expect(relay.stderr).toContain(`exactly-once: checkpoint topic ${topic} created: 1 partition, cleanup.policy=compact`);
        relay.kill('SIGTERM');
        expect(await relay.exited).toBe(0);
      } finally {
        await relay[Symbol.asyncDispose]();
      }
      expect(await describeTopic(topic)).toMatchObject({ policy: 'compact', partitions: 1 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);
});
