import { readFileSync } from 'node:fs';
import { ConfigError } from '../errors.js';
import { Section, describe } from './reader.js';
import { parseTemplate, type Template } from '../outbox/template.js';

/**
 * The compiled config: every default filled in, durations as `…Ms`, sizes as `…Bytes`.
 * `docs/config.md` is the reference for the YAML that produces it; keep the two in step.
 */
export interface Config {
  postgres: PostgresConfig;
  outbox: OutboxConfig;
  pipeline: PipelineConfig;
  sink: SinkConfig;
  http: { host: string; port: number };
  log: { level: LogLevel };
  shutdown: { graceMs: number };
}

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface PostgresConfig {
  url: string;
  /** Overrides the URL's password; from `passwordFile` or `password`. */
  password: string | undefined;
  slot: string;
  publication: string;
  /** Create the publication (for the outbox tables) if it does not exist. */
  createPublication: boolean;
  /** Create the slot on the first start. A slot that existed and vanished is never recreated. */
  createSlot: boolean;
  /** How often a standby status update (with the confirmed LSN) is sent even if nothing changed. */
  statusIntervalMs: number;
  /**
   * After a read that found less than READ_COALESCE_BYTES waiting (the relay has caught up with
   * the server), wait this long before reading again; 0 reads at once. See stream.ts.
   */
  readCoalesceMs: number;
  /** Interval of `pg_logical_emit_message` heartbeats; 0 disables them. */
  heartbeatIntervalMs: number;
  heartbeatPrefix: string;
  /** How often slot lag and retained WAL are polled for metrics. */
  lagPollIntervalMs: number;
  connectTimeoutMs: number;
  /** statement_timeout of the admin connection's queries (checks, heartbeats, lag). */
  statementTimeoutMs: number;
  /** lock_timeout of the admin connection's queries. */
  lockTimeoutMs: number;
  /** How long creating the slot may wait for running transactions to end. */
  slotCreateTimeoutMs: number;
  reconnect: BackoffConfig;
}

export interface BackoffConfig {
  initialMs: number;
  maxMs: number;
}

export interface ColumnMap {
  id: string;
  aggregatetype: string;
  aggregateid: string;
  type: string;
  payload: string;
  headers: string;
  correlation_id: string;
  causation_id: string;
  reply_to: string;
  traceparent: string;
}

export const COLUMN_FIELDS = [
  'id',
  'aggregatetype',
  'aggregateid',
  'type',
  'payload',
  'headers',
  'correlation_id',
  'causation_id',
  'reply_to',
  'traceparent',
] as const satisfies ReadonlyArray<keyof ColumnMap>;

/** The outbox fields a table must have a column for; the others are optional. */
export const REQUIRED_COLUMN_FIELDS = ['id', 'aggregatetype', 'aggregateid', 'payload'] as const satisfies ReadonlyArray<
  (typeof COLUMN_FIELDS)[number]
>;

export interface TableConfig {
  schema: string;
  table: string;
  /** `schema.table`, as written to SQL (quoted when needed). */
  qualified: string;
  columns: ColumnMap;
}

export type PoisonPolicy = 'halt' | 'dead-letter';

export interface OutboxConfig {
  tables: TableConfig[];
  /** Transactional `pg_logical_emit_message` outbox events; `prefix` selects them. */
  messages: { enabled: boolean; prefix: string };
  onPoison: PoisonPolicy;
}

export interface PipelineConfig {
  maxInFlightMessages: number;
  maxInFlightBytes: number;
  batchMaxMessages: number;
  batchMaxBytes: number;
  lingerMs: number;
  retry: BackoffConfig;
}

export interface KafkaSinkConfig {
  brokers: string[];
  clientId: string;
  topic: Template;
  deadLetterTopic: string;
  compression: 'none' | 'gzip';
  /** The broker's (or topic's) max message size: a bigger message is poison, not a retry loop. */
  maxMessageBytes: number;
  connectionTimeoutMs: number;
  requestTimeoutMs: number;
  /**
   * May the producer ask the broker to create a missing topic? true: ask, and the broker's
   * `auto.create.topics.enable` decides. false: never ask; a missing topic waits until created.
   */
  autoCreateTopics: boolean;
  ssl: TlsConfig | undefined;
  sasl: SaslConfig | undefined;
}

export interface TlsConfig {
  ca: string | undefined;
  cert: string | undefined;
  key: string | undefined;
  rejectUnauthorized: boolean;
  servername: string | undefined;
}

export interface SaslConfig {
  mechanism: 'plain' | 'scram-sha-256' | 'scram-sha-512';
  username: string;
  password: string;
}

export interface StdoutSinkConfig {
  destination: Template;
  deadLetterDestination: string;
}

export type ExchangeType = 'topic' | 'direct' | 'fanout' | 'x-consistent-hash';

export interface RabbitMqSinkConfig {
  /** amqp:// or amqps:// URL; the vhost is its path. */
  url: string;
  exchange: string;
  exchangeType: ExchangeType;
  /** Declare the exchange (durable) at start; otherwise it must exist. */
  declare: boolean;
  routingKey: Template;
  deadLetterExchange: string;
  /** Routing key for dead letters; null means the message's own routing key (or `poison`). */
  deadLetterRoutingKey: string | null;
  confirmTimeoutMs: number;
  heartbeatSeconds: number;
  connectionTimeoutMs: number;
  maxMessageBytes: number;
  tls: TlsConfig | undefined;
}

export type SinkConfig = (
  | { type: 'kafka'; kafka: KafkaSinkConfig }
  | { type: 'rabbitmq'; rabbitmq: RabbitMqSinkConfig }
  | { type: 'stdout'; stdout: StdoutSinkConfig }
) & {
  /** A call to the broker unanswered this long makes the sink stalled: not ready, until it answers. */
  stallTimeoutMs: number;
};

/** All defaults in one place. Debezium outbox event router conventions where they apply. */
export const DEFAULTS = {
  slot: 'outboxd',
  publication: 'outboxd',
  table: 'public.outbox',
  columns: {
    id: 'id',
    aggregatetype: 'aggregatetype',
    aggregateid: 'aggregateid',
    type: 'type',
    payload: 'payload',
    headers: 'headers',
    correlation_id: 'correlation_id',
    causation_id: 'causation_id',
    reply_to: 'reply_to',
    traceparent: 'traceparent',
  } satisfies ColumnMap,
  messagePrefix: 'outbox',
  heartbeatPrefix: 'outboxd.heartbeat',
  statusInterval: '10s',
  readCoalesce: '1ms',
  heartbeatInterval: '30s',
  lagPollInterval: '10s',
  connectTimeout: '10s',
  statementTimeout: '30s',
  lockTimeout: '10s',
  slotCreateTimeout: '10m',
  stallTimeout: '5s',
  reconnectInitial: '500ms',
  reconnectMax: '30s',
  maxInFlightMessages: 5_000,
  maxInFlightBytes: '64MiB',
  batchMaxMessages: 2_000,
  batchMaxBytes: '4MiB',
  linger: '5ms',
  retryInitial: '200ms',
  retryMax: '30s',
  kafkaTopic: 'outbox.event.{aggregatetype}',
  deadLetterTopic: 'outbox.deadletter',
  kafkaClientId: 'outboxd',
  routingKey: '{aggregatetype}.{type}',
  /** x-consistent-hash hashes the routing key: the shard key is the whole routing key. */
  routingKeyConsistentHash: '{aggregateid}',
  deadLetterExchange: 'outbox.deadletter',
  confirmTimeout: '30s',
  amqpHeartbeat: '10s',
  rabbitMaxMessageBytes: '16MiB',
  kafkaMaxMessageBytes: '1MiB',
  kafkaConnectionTimeout: '10s',
  kafkaRequestTimeout: '30s',
  httpHost: '0.0.0.0',
  httpPort: 9187,
  logLevel: 'info' as LogLevel,
  shutdownGrace: '30s',
} as const;

/** The secret values a config holds (passwords, TLS private keys), for the redaction. */
export function secretsOf(cfg: Config): string[] {
  const urlPassword = (url: string) => {
    try {
      return decodeURIComponent(new URL(url).password);
    } catch {
      return '';
    }
  };
  const out = [cfg.postgres.password ?? '', urlPassword(cfg.postgres.url)];
  if (cfg.sink.type === 'kafka') out.push(cfg.sink.kafka.sasl?.password ?? '', cfg.sink.kafka.ssl?.key ?? '');
  if (cfg.sink.type === 'rabbitmq') out.push(urlPassword(cfg.sink.rabbitmq.url), cfg.sink.rabbitmq.tls?.key ?? '');
  return out.filter((s) => s !== '');
}

const TOP = ['postgres', 'outbox', 'pipeline', 'sink', 'http', 'log', 'shutdown'] as const;

/** Validates a parsed, interpolated YAML document. Throws ConfigError naming the path. */
export function compileConfig(doc: unknown): Config {
  const root = Section.of(doc, '', TOP);
  if (!root.has('postgres')) throw new ConfigError('postgres', 'is required (at least postgres.url)');
  return {
    postgres: compilePostgres(root.section('postgres', POSTGRES_KEYS)),
    outbox: compileOutbox(root.section('outbox', ['tables', 'messages', 'onPoison'])),
    pipeline: compilePipeline(
      root.section('pipeline', ['maxInFlightMessages', 'maxInFlightBytes', 'batchMaxMessages', 'batchMaxBytes', 'linger', 'retry']),
    ),
    sink: compileSink(root.section('sink', ['type', 'stallTimeout', 'kafka', 'rabbitmq', 'stdout'])),
    http: compileHttp(root.section('http', ['host', 'port'])),
    log: {
      level: root
        .section('log', ['level'])
        .oneOf('level', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], DEFAULTS.logLevel),
    },
    shutdown: { graceMs: root.section('shutdown', ['grace']).durationMs('grace', DEFAULTS.shutdownGrace, { min: 0 }) },
  };
}

const POSTGRES_KEYS = [
  'url',
  'password',
  'passwordFile',
  'slot',
  'publication',
  'createSlot',
  'createPublication',
  'statusInterval',
  'readCoalesce',
  'heartbeat',
  'lagPollInterval',
  'connectTimeout',
  'statementTimeout',
  'lockTimeout',
  'slotCreateTimeout',
  'reconnect',
] as const;

function compilePostgres(s: Section): PostgresConfig {
  const url = s.string('url');
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new ConfigError(s.at('url'), 'must be a postgres:// or postgresql:// URL');
  }
  try {
    new URL(url);
  } catch {
    throw new ConfigError(s.at('url'), 'is not a valid URL');
  }
  if (s.has('password') && s.has('passwordFile')) {
    throw new ConfigError(s.at('passwordFile'), 'set either password or passwordFile, not both');
  }
  const heartbeat = s.section('heartbeat', ['interval', 'prefix']);
  return {
    url,
    password: s.has('passwordFile') ? readSecret(s, 'passwordFile') : s.optString('password'),
    slot: s.identifier('slot', DEFAULTS.slot),
    publication: s.identifier('publication', DEFAULTS.publication),
    createSlot: s.bool('createSlot', true),
    createPublication: s.bool('createPublication', true),
    statusIntervalMs: s.durationMs('statusInterval', DEFAULTS.statusInterval, { min: 100, max: 3_600_000 }),
    readCoalesceMs: s.durationMs('readCoalesce', DEFAULTS.readCoalesce, { min: 0, max: 100 }),
    heartbeatIntervalMs: heartbeat.durationMs('interval', DEFAULTS.heartbeatInterval, { min: 0 }),
    heartbeatPrefix: heartbeat.string('prefix', DEFAULTS.heartbeatPrefix),
    lagPollIntervalMs: s.durationMs('lagPollInterval', DEFAULTS.lagPollInterval, { min: 100 }),
    connectTimeoutMs: s.durationMs('connectTimeout', DEFAULTS.connectTimeout, { min: 100 }),
    statementTimeoutMs: s.durationMs('statementTimeout', DEFAULTS.statementTimeout, { min: 100 }),
    lockTimeoutMs: s.durationMs('lockTimeout', DEFAULTS.lockTimeout, { min: 100 }),
    slotCreateTimeoutMs: s.durationMs('slotCreateTimeout', DEFAULTS.slotCreateTimeout, { min: 1000 }),
    reconnect: compileBackoff(s.section('reconnect', ['initial', 'max']), DEFAULTS.reconnectInitial, DEFAULTS.reconnectMax),
  };
}

function compileBackoff(s: Section, initial: string, max: string): BackoffConfig {
  const initialMs = s.durationMs('initial', initial, { min: 1 });
  const maxMs = s.durationMs('max', max, { min: 1 });
  if (maxMs < initialMs) throw new ConfigError(s.at('max'), `must be at least ${s.path}.initial`);
  return { initialMs, maxMs };
}

function compileOutbox(s: Section): OutboxConfig {
  const tables = s.list('tables');
  const compiled =
    tables.length === 0 && !s.has('tables')
      ? [compileTable(Section.of({ name: DEFAULTS.table }, s.at('tables[0]'), ['name']))]
      : tables.map(({ value, path }) => compileTable(Section.of(value, path, ['name', 'columns'])));
  const seen = new Set<string>();
  compiled.forEach((t, i) => {
    if (seen.has(t.qualified)) throw new ConfigError(`${s.at('tables')}[${i}].name`, `table ${t.qualified} is listed twice`);
    seen.add(t.qualified);
  });
  const messages = s.section('messages', ['enabled', 'prefix']);
  const enabled = messages.bool('enabled', true);
  if (compiled.length === 0 && !enabled) {
    throw new ConfigError(s.at('tables'), 'is empty and outbox.messages is disabled: nothing to relay');
  }
  return {
    tables: compiled,
    messages: { enabled, prefix: messages.string('prefix', DEFAULTS.messagePrefix) },
    onPoison: s.oneOf('onPoison', ['halt', 'dead-letter'] as const, 'halt'),
  };
}

function compileTable(s: Section): TableConfig {
  const name = s.string('name');
  const parts = name.split('.');
  if (parts.length > 2 || parts.some((p) => p === '')) {
    throw new ConfigError(s.at('name'), `must be "table" or "schema.table", got "${name}"`);
  }
  const [schema, table] = parts.length === 2 ? (parts as [string, string]) : ['public', parts[0] as string];
  const cols = s.section('columns', COLUMN_FIELDS);
  const columns = { ...DEFAULTS.columns };
  for (const field of COLUMN_FIELDS) columns[field] = cols.string(field, DEFAULTS.columns[field]);
  return { schema, table, qualified: `${quoteIdent(schema)}.${quoteIdent(table)}`, columns };
}

/** Quotes an identifier for SQL only when Postgres would need it. */
export function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

function compilePipeline(s: Section): PipelineConfig {
  const batchMaxMessages = s.int('batchMaxMessages', DEFAULTS.batchMaxMessages, { min: 1, max: 100_000 });
  const maxInFlightMessages = s.int('maxInFlightMessages', DEFAULTS.maxInFlightMessages, { min: 1 });
  if (maxInFlightMessages < batchMaxMessages) {
    throw new ConfigError(s.at('maxInFlightMessages'), `must be at least pipeline.batchMaxMessages (${batchMaxMessages})`);
  }
  return {
    maxInFlightMessages,
    maxInFlightBytes: s.sizeBytes('maxInFlightBytes', DEFAULTS.maxInFlightBytes, { min: 1024 }),
    batchMaxMessages,
    batchMaxBytes: s.sizeBytes('batchMaxBytes', DEFAULTS.batchMaxBytes, { min: 1024 }),
    lingerMs: s.durationMs('linger', DEFAULTS.linger, { min: 0, max: 10_000 }),
    retry: compileBackoff(s.section('retry', ['initial', 'max']), DEFAULTS.retryInitial, DEFAULTS.retryMax),
  };
}

function compileSink(s: Section): SinkConfig {
  const stallTimeoutMs = s.durationMs('stallTimeout', DEFAULTS.stallTimeout, { min: 100 });
  const type = s.oneOf('type', ['kafka', 'rabbitmq', 'stdout'] as const, 'stdout');
  for (const other of ['kafka', 'rabbitmq', 'stdout'] as const) {
    if (other !== type && s.has(other)) {
      throw new ConfigError(s.at(other), `is set but sink.type is ${type}; remove it or set sink.type: ${other}`);
    }
  }
  if (type === 'kafka') {
    return {
      type,
      stallTimeoutMs,
      kafka: compileKafka(
        s.section('kafka', [
          'brokers',
          'clientId',
          'topic',
          'deadLetterTopic',
          'compression',
          'maxMessageBytes',
          'connectionTimeout',
          'requestTimeout',
          'autoCreateTopics',
          'ssl',
          'sasl',
        ]),
      ),
    };
  }
  if (type === 'rabbitmq') {
    return {
      type,
      stallTimeoutMs,
      rabbitmq: compileRabbitMq(
        s.section('rabbitmq', [
          'url',
          'password',
          'passwordFile',
          'exchange',
          'exchangeType',
          'declare',
          'routingKey',
          'deadLetterExchange',
          'deadLetterRoutingKey',
          'confirmTimeout',
          'heartbeat',
          'connectionTimeout',
          'maxMessageBytes',
          'tls',
        ]),
      ),
    };
  }
  const out = s.section('stdout', ['destination', 'deadLetterDestination']);
  return {
    type,
    stallTimeoutMs,
    stdout: {
      destination: template(out, 'destination', DEFAULTS.kafkaTopic),
      deadLetterDestination: out.string('deadLetterDestination', DEFAULTS.deadLetterTopic),
    },
  };
}

function compileKafka(s: Section): KafkaSinkConfig {
  const brokers = s.stringList('brokers');
  if (brokers.length === 0) throw new ConfigError(s.at('brokers'), 'is required: a list of host:port');
  brokers.forEach((b, i) => {
    if (!/^[^\s:]+:\d{1,5}$/.test(b)) throw new ConfigError(`${s.at('brokers')}[${i}]`, `must be host:port, got "${b}"`);
  });
  return {
    brokers,
    clientId: s.string('clientId', DEFAULTS.kafkaClientId),
    topic: template(s, 'topic', DEFAULTS.kafkaTopic),
    deadLetterTopic: s.string('deadLetterTopic', DEFAULTS.deadLetterTopic),
    compression: s.oneOf('compression', ['none', 'gzip'] as const, 'none'),
    maxMessageBytes: s.sizeBytes('maxMessageBytes', DEFAULTS.kafkaMaxMessageBytes, { min: 1024 }),
    connectionTimeoutMs: s.durationMs('connectionTimeout', DEFAULTS.kafkaConnectionTimeout, { min: 100 }),
    requestTimeoutMs: s.durationMs('requestTimeout', DEFAULTS.kafkaRequestTimeout, { min: 100 }),
    autoCreateTopics: s.bool('autoCreateTopics', true),
    ssl: compileTls(s),
    sasl: compileSasl(s),
  };
}

function compileRabbitMq(s: Section): RabbitMqSinkConfig {
  let url = s.string('url');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(s.at('url'), 'is not a valid URL');
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new ConfigError(s.at('url'), `must be an amqp:// or amqps:// URL, got ${parsed.protocol}//`);
  }
  if (s.has('password') && s.has('passwordFile')) {
    throw new ConfigError(s.at('passwordFile'), 'set either password or passwordFile, not both');
  }
  const password = s.has('passwordFile') ? readSecret(s, 'passwordFile') : s.optString('password');
  if (password !== undefined) {
    parsed.password = encodeURIComponent(password);
    url = parsed.toString();
  }
  const exchangeType = s.oneOf('exchangeType', ['topic', 'direct', 'fanout', 'x-consistent-hash'] as const, 'topic');
  const dlrk = s.optString('deadLetterRoutingKey');
  return {
    url,
    exchange: s.string('exchange'),
    exchangeType,
    declare: s.bool('declare', false),
    routingKey: template(s, 'routingKey', exchangeType === 'x-consistent-hash' ? DEFAULTS.routingKeyConsistentHash : DEFAULTS.routingKey),
    deadLetterExchange: s.string('deadLetterExchange', DEFAULTS.deadLetterExchange),
    deadLetterRoutingKey: dlrk === undefined || dlrk === '' ? null : dlrk,
    confirmTimeoutMs: s.durationMs('confirmTimeout', DEFAULTS.confirmTimeout, { min: 100 }),
    heartbeatSeconds: Math.round(s.durationMs('heartbeat', DEFAULTS.amqpHeartbeat, { min: 0, max: 3_600_000 }) / 1000),
    connectionTimeoutMs: s.durationMs('connectionTimeout', DEFAULTS.kafkaConnectionTimeout, { min: 100 }),
    maxMessageBytes: s.sizeBytes('maxMessageBytes', DEFAULTS.rabbitMaxMessageBytes, { min: 1024 }),
    tls: compileTls(s, 'tls'),
  };
}

function compileTls(parent: Section, key = 'ssl'): TlsConfig | undefined {
  const raw = parent.raw_(key);
  if (raw === undefined || raw === null || raw === false || raw === 'false' || raw === '') return undefined;
  if (raw === true || raw === 'true')
    return { ca: undefined, cert: undefined, key: undefined, rejectUnauthorized: true, servername: undefined };
  const s = parent.section(key, ['caFile', 'certFile', 'keyFile', 'rejectUnauthorized', 'servername']);
  return {
    ca: s.has('caFile') ? readSecret(s, 'caFile') : undefined,
    cert: s.has('certFile') ? readSecret(s, 'certFile') : undefined,
    key: s.has('keyFile') ? readSecret(s, 'keyFile') : undefined,
    rejectUnauthorized: s.bool('rejectUnauthorized', true),
    servername: s.optString('servername'),
  };
}

function compileSasl(parent: Section): SaslConfig | undefined {
  if (!parent.has('sasl')) return undefined;
  const s = parent.section('sasl', ['mechanism', 'username', 'password', 'passwordFile']);
  if (s.has('password') && s.has('passwordFile')) {
    throw new ConfigError(s.at('passwordFile'), 'set either password or passwordFile, not both');
  }
  const password = s.has('passwordFile') ? readSecret(s, 'passwordFile') : s.string('password');
  return {
    mechanism: s.oneOf('mechanism', ['plain', 'scram-sha-256', 'scram-sha-512'] as const),
    username: s.string('username'),
    password,
  };
}

function compileHttp(s: Section): { host: string; port: number } {
  return { host: s.string('host', DEFAULTS.httpHost), port: s.int('port', DEFAULTS.httpPort, { min: 0, max: 65535 }) };
}

function template(s: Section, key: string, fallback: string): Template {
  const text = s.string(key, fallback);
  try {
    return parseTemplate(text);
  } catch (err) {
    throw new ConfigError(s.at(key), (err as Error).message);
  }
}

function readSecret(s: Section, key: string): string {
  const file = s.string(key);
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ConfigError(s.at(key), `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? describe(err)}`);
  }
}
