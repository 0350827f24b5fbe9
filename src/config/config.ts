import { compile } from './compile.js';
import { type ColumnField, type ConfigInput, ConfigSchema } from './schema.js';
import type { Compiled } from './schema-kit.js';
import { validate } from './validate.js';

import { shardName } from './rules.js';
export { type Shard, quoteIdent, shardName } from './rules.js';

/**
 * From the file as written to the config the code uses: validated against the declaration
 * (validate.ts: defaults filled in, one error naming the YAML path), then compiled by walking the
 * same declaration (compile.ts): durations as `…Ms`, sizes as bytes, templates parsed, secrets
 * read from their files, and each section's rule checks the keys that depend on each other. The
 * types below derive from the declaration; nothing restates its keys.
 */
export function compileConfig(doc: unknown): Config {
  const input = validate(ConfigSchema, doc) as ConfigInput;
  return compile(ConfigSchema, input, '', input);
}

export type Config = Compiled<typeof ConfigSchema>;
export type PostgresConfig = Config['postgres'];
export type OutboxConfig = Config['outbox'];
export type TableConfig = OutboxConfig['tables'][number];
export type PipelineConfig = Config['pipeline'];
export type BackoffConfig = PipelineConfig['retry'];
export type SinkConfig = Config['sink'];
export type KafkaSinkConfig = Extract<SinkConfig, { type: 'kafka' }>['kafka'];
export type RabbitMqSinkConfig = Extract<SinkConfig, { type: 'rabbitmq' }>['rabbitmq'];
export type StdoutSinkConfig = Extract<SinkConfig, { type: 'stdout' }>['stdout'];
export type CloudEventsConfig = SinkConfig['cloudevents'];
export type TlsConfig = NonNullable<KafkaSinkConfig['ssl']>;
export type SaslConfig = NonNullable<KafkaSinkConfig['sasl']>;
export type OAuthBearerConfig = Extract<SaslConfig, { mechanism: 'oauthbearer' }>['oauthbearer'];
export type AwsMskIamConfig = Extract<SaslConfig, { mechanism: 'aws-msk-iam' }>['awsMskIam'];
export type PoisonPolicy = OutboxConfig['onPoison'];
export type LogLevel = Config['log']['level'];
export type ExchangeType = RabbitMqSinkConfig['exchangeType'];
export type ColumnMap = Record<ColumnField, string>;
export type TelemetryConfig = Config['telemetry'];
export type TracesConfig = TelemetryConfig['traces'];

/**
 * The config of shard `index` of the same outbox (postgres.shard): its slot and publication, for
 * `setup` and `validate`, which act on every shard. The sink is left as it is.
 */
export function shardConfig(cfg: Config, index: number): Config {
  const shard = cfg.postgres.shard;
  if (!shard) return cfg;
  const next = { index, count: shard.count };
  return {
    ...cfg,
    postgres: {
      ...cfg.postgres,
      slot: shardName(shard.slot, next),
      publication: shardName(shard.publication, next),
      shard: { ...shard, index },
    },
  };
}

/** Every shard's config (postgres.shard), or just this one when the outbox is not sharded. */
export function allShards(cfg: Config): Config[] {
  const shard = cfg.postgres.shard;
  return shard ? Array.from({ length: shard.count }, (_, i) => shardConfig(cfg, i)) : [cfg];
}
