import { ConfigError } from '../errors.js';
import { defaultKafkaWorkers } from './cores.js';
import { sourceTemplateProblem } from '../outbox/cloudevents.js';
import { parseTemplate, type Template } from '../outbox/template.js';
import { compileSasl, compileTls } from './auth.js';
import { type PgUrl, parsePgUrl } from './pg-url.js';
import { COLUMN_FIELDS, type ColumnField, ConfigSchema, type ConfigInput } from './schema.js';
import { readSecret } from './secrets.js';
import { parseDurationMs, parseSizeBytes } from './units.js';
import { validate } from './validate.js';

/**
 * From the file as written (schema.ts) to the config the code uses: durations as `…Ms`, sizes
 * as `…Bytes`, templates parsed, secrets read from their files, the rules that span keys checked
 * (TLS and SASL in auth.ts). The types below derive from these functions; nothing restates the keys.
 */
export function compileConfig(doc: unknown): Config {
  const v = validate(ConfigSchema, doc) as ConfigInput;
  return {
    postgres: compilePostgres(v.postgres),
    outbox: compileOutbox(v.outbox),
    pipeline: compilePipeline(v.pipeline),
    sink: compileSink(v.sink, v.postgres.slot),
    http: v.http,
    log: v.log,
    shutdown: { graceMs: ms(v.shutdown.grace) },
    telemetry: compileTelemetry(v.telemetry),
  };
}

export type Config = {
  postgres: PostgresConfig;
  outbox: OutboxConfig;
  pipeline: PipelineConfig;
  sink: SinkConfig;
  http: ConfigInput['http'];
  log: ConfigInput['log'];
  shutdown: { graceMs: number };
  telemetry: TelemetryConfig;
};
export type PostgresConfig = ReturnType<typeof compilePostgres>;
export type OutboxConfig = ReturnType<typeof compileOutbox>;
export type TableConfig = ReturnType<typeof compileTable>;
export type PipelineConfig = ReturnType<typeof compilePipeline>;
export type BackoffConfig = ReturnType<typeof compileBackoff>;
export type SinkConfig = ReturnType<typeof compileSink>;
export type KafkaSinkConfig = ReturnType<typeof compileKafka>;
export type RabbitMqSinkConfig = ReturnType<typeof compileRabbitMq>;
export type StdoutSinkConfig = ReturnType<typeof compileStdout>;
export type CloudEventsConfig = ReturnType<typeof compileCloudEvents>;
export type TlsConfig = NonNullable<ReturnType<typeof compileTls>>;
export type SaslConfig = NonNullable<ReturnType<typeof compileSasl>>;
export type OAuthBearerConfig = Extract<SaslConfig, { mechanism: 'oauthbearer' }>['oauthbearer'];
export type AwsMskIamConfig = Extract<SaslConfig, { mechanism: 'aws-msk-iam' }>['awsMskIam'];
export type PoisonPolicy = OutboxConfig['onPoison'];
export type LogLevel = Config['log']['level'];
export type ExchangeType = RabbitMqSinkConfig['exchangeType'];
export type ColumnMap = Record<ColumnField, string>;
export type TelemetryConfig = ReturnType<typeof compileTelemetry>;
export type TracesConfig = TelemetryConfig['traces'];

/** A validated duration or size (validate.ts checked it parses). */
const ms = (d: string): number => parseDurationMs(d) as number;
const bytes = (s: string): number => parseSizeBytes(s) as number;

function compilePostgres(p: ConfigInput['postgres']) {
  let parsed: PgUrl;
  try {
    parsed = parsePgUrl(p.url);
  } catch (err) {
    throw new ConfigError('postgres.url', (err as Error).message);
  }
  return {
    url: p.url,
    /** The URL's hosts in the order they are tried, each as a single-host URL (pg-url.ts). */
    hosts: parsed.hosts,
    /** Which host to keep (libpq's rule): `any` takes the first that answers. */
    targetSessionAttrs: parsed.targetSessionAttrs,
    /** Overrides the URL's password; from `passwordFile` or `password`. */
    password: p.passwordFile !== undefined ? readSecret('postgres.passwordFile', p.passwordFile) : p.password,
    slot: p.slot,
    publication: p.publication,
    createPublication: p.createPublication,
    createSlot: p.createSlot,
    statusIntervalMs: ms(p.statusInterval),
    readCoalesceMs: ms(p.readCoalesce),
    heartbeatIntervalMs: ms(p.heartbeat.interval),
    heartbeatPrefix: p.heartbeat.prefix,
    lagPollIntervalMs: ms(p.lagPollInterval),
    progressTimeoutMs: ms(p.progressTimeout),
    connectTimeoutMs: ms(p.connectTimeout),
    statementTimeoutMs: ms(p.statementTimeout),
    lockTimeoutMs: ms(p.lockTimeout),
    slotCreateTimeoutMs: ms(p.slotCreateTimeout),
    failover: p.failover,
    onLostSlot: p.onLostSlot,
    reconnect: compileBackoff('postgres.reconnect', p.reconnect),
  };
}

function compileBackoff(path: string, b: { initial: string; max: string }) {
  const initialMs = ms(b.initial);
  const maxMs = ms(b.max);
  if (maxMs < initialMs) throw new ConfigError(`${path}.max`, `must be at least ${path}.initial`);
  return { initialMs, maxMs };
}

function compileOutbox(o: ConfigInput['outbox']) {
  const tables = o.tables.map((t, i) => compileTable(`outbox.tables[${i}]`, t));
  const seen = new Set<string>();
  tables.forEach((t, i) => {
    if (seen.has(t.qualified)) throw new ConfigError(`outbox.tables[${i}].name`, `table ${t.name} is listed twice`);
    seen.add(t.qualified);
  });
  if (tables.length === 0 && !o.messages.enabled) {
    throw new ConfigError('outbox.tables', 'is empty and outbox.messages is disabled: nothing to relay');
  }
  const p = o.prune;
  return {
    tables,
    messages: o.messages,
    onPoison: o.onPoison,
    prune: {
      mode: p.mode,
      retainMs: ms(p.retain),
      intervalMs: ms(p.interval),
      batchSize: p.batchSize,
      pauseMs: ms(p.pause),
      lockTimeoutMs: ms(p.lockTimeout),
      premake: p.premake,
    },
  };
}

function compileTable(path: string, t: ConfigInput['outbox']['tables'][number]) {
  const parts = t.name.split('.');
  if (parts.length > 2 || parts.some((p) => p === ''))
    throw new ConfigError(`${path}.name`, `must be "table" or "schema.table", got "${t.name}"`);
  const [schema, table] = parts.length === 2 ? (parts as [string, string]) : ['public', parts[0] as string];
  const columns = Object.fromEntries(COLUMN_FIELDS.map((f) => [f, t.columns[f]])) as ColumnMap;
  // name: `schema.table` as written, for messages and metric labels; qualified: for SQL.
  return {
    schema,
    table,
    name: `${schema}.${table}`,
    qualified: `${quoteIdent(schema)}.${quoteIdent(table)}`,
    columns,
    createdAt: t.columns.created_at,
  };
}

/**
 * An identifier as SQL text: always quoted, `"` doubled. Left bare, a key word such as `user` or
 * `current_date` is read as the SQL function of that name: a value changed silently.
 */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

function compilePipeline(p: ConfigInput['pipeline']) {
  if (p.maxInFlightMessages < p.batchMaxMessages) {
    throw new ConfigError('pipeline.maxInFlightMessages', `must be at least pipeline.batchMaxMessages (${p.batchMaxMessages})`);
  }
  return {
    maxInFlightMessages: p.maxInFlightMessages,
    maxInFlightBytes: bytes(p.maxInFlightBytes),
    batchMaxMessages: p.batchMaxMessages,
    batchMaxBytes: bytes(p.batchMaxBytes),
    lingerMs: ms(p.linger),
    retry: compileBackoff('pipeline.retry', p.retry),
  };
}

function compileSink(s: ConfigInput['sink'], slot: string) {
  for (const other of ['kafka', 'rabbitmq', 'stdout'] as const) {
    if (other !== s.type && s[other] !== undefined) {
      throw new ConfigError(`sink.${other}`, `is set but sink.type is ${s.type}; remove it or set sink.type: ${other}`);
    }
  }
  const stallTimeoutMs = ms(s.stallTimeout);
  const cloudevents = compileCloudEvents(s.cloudevents);
  if (s.type === 'kafka') {
    if (s.kafka === undefined) throw new ConfigError('sink.kafka.brokers', 'is required: a list of host:port');
    return { type: s.type, stallTimeoutMs, cloudevents, kafka: compileKafka(s.kafka, slot) };
  }
  if (s.type === 'rabbitmq') {
    if (s.rabbitmq === undefined) throw new ConfigError('sink.rabbitmq.url', 'is required');
    return { type: s.type, stallTimeoutMs, cloudevents, rabbitmq: compileRabbitMq(s.rabbitmq) };
  }
  return {
    type: s.type,
    stallTimeoutMs,
    cloudevents,
    stdout: compileStdout(s.stdout ?? (validate(STDOUT, {}, 'sink.stdout') as StdoutInput)),
  };
}

/** sink.cloudevents: the mode, and the source template, checked to make a URI-reference. */
function compileCloudEvents(c: ConfigInput['sink']['cloudevents']) {
  const source = template(c.source);
  const problem = sourceTemplateProblem(source);
  if (problem !== null) throw new ConfigError('sink.cloudevents.source', problem);
  return { mode: c.mode, source };
}

const STDOUT = ConfigSchema.properties.sink.properties.stdout;
type StdoutInput = NonNullable<ConfigInput['sink']['stdout']>;

function compileKafka(k: NonNullable<ConfigInput['sink']['kafka']>, slot: string) {
  k.brokers.forEach((b, i) => {
    if (!/^[^\s:]+:\d{1,5}$/.test(b)) throw new ConfigError(`sink.kafka.brokers[${i}]`, `must be host:port, got "${b}"`);
  });
  return {
    brokers: k.brokers,
    clientId: k.clientId,
    topic: template(k.topic),
    deadLetterTopic: k.deadLetterTopic,
    compression: k.compression,
    /** The broker's (or topic's) max message size: a bigger message is poison, not a retry loop. */
    maxMessageBytes: bytes(k.maxMessageBytes),
    connectionTimeoutMs: ms(k.connectionTimeout),
    requestTimeoutMs: ms(k.requestTimeout),
    autoCreateTopics: k.autoCreateTopics,
    delivery: k.delivery,
    checkpointTopic: k.checkpointTopic,
    transactionalId: k.transactionalId ?? `outboxd-${slot}`,
    transactionTimeoutMs: ms(k.transactionTimeout),
    /** Publishing worker threads (sink/kafka/workers.ts); 0: on the main thread. */
    workers: k.workers ?? defaultKafkaWorkers(),
    ssl: compileTls('sink.kafka.ssl', k.ssl),
    sasl: compileSasl(k.sasl, k.ssl !== undefined),
  };
}

function compileRabbitMq(r: NonNullable<ConfigInput['sink']['rabbitmq']>) {
  let parsed: URL;
  try {
    parsed = new URL(r.url);
  } catch {
    throw new ConfigError('sink.rabbitmq.url', 'is not a valid URL');
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new ConfigError('sink.rabbitmq.url', `must be an amqp:// or amqps:// URL, got ${parsed.protocol}//`);
  }
  const password = r.passwordFile !== undefined ? readSecret('sink.rabbitmq.passwordFile', r.passwordFile) : r.password;
  const tls = compileTls('sink.rabbitmq.tls', r.tls);
  if (r.authMechanism === 'external') {
    // EXTERNAL logs in as the client certificate's identity: without one there is nothing to show.
    if (parsed.protocol !== 'amqps:') throw new ConfigError('sink.rabbitmq.url', 'must be amqps:// with authMechanism external');
    if (tls?.cert === undefined || tls.key === undefined) {
      throw new ConfigError('sink.rabbitmq.tls', 'needs certFile and keyFile with authMechanism external (the certificate is the login)');
    }
    if (password !== undefined || parsed.password !== '') {
      throw new ConfigError(
        r.password !== undefined
          ? 'sink.rabbitmq.password'
          : r.passwordFile !== undefined
            ? 'sink.rabbitmq.passwordFile'
            : 'sink.rabbitmq.url',
        'a password is not used with authMechanism external; remove it',
      );
    }
  }
  if (password !== undefined) parsed.password = encodeURIComponent(password);
  return {
    /** amqp:// or amqps:// URL; the vhost is its path. */
    url: password !== undefined ? parsed.toString() : r.url,
    authMechanism: r.authMechanism,
    exchange: r.exchange,
    exchangeType: r.exchangeType,
    declare: r.declare,
    routingKey: template(r.routingKey ?? (r.exchangeType === 'x-consistent-hash' ? '{aggregateid}' : '{aggregatetype}.{type}')),
    deadLetterExchange: r.deadLetterExchange,
    /** null: the message's own routing key (or `poison`). */
    deadLetterRoutingKey: r.deadLetterRoutingKey ?? null,
    confirmTimeoutMs: ms(r.confirmTimeout),
    heartbeatSeconds: Math.round(ms(r.heartbeat) / 1000),
    connectionTimeoutMs: ms(r.connectionTimeout),
    maxMessageBytes: bytes(r.maxMessageBytes),
    tls,
  };
}

function compileStdout(s: StdoutInput) {
  return { destination: template(s.destination), deadLetterDestination: s.deadLetterDestination };
}

/** An HTTP header name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

function compileTelemetry(t: ConfigInput['telemetry']) {
  const tr = t.traces;
  let endpoint: URL;
  try {
    endpoint = new URL(tr.endpoint);
  } catch {
    throw new ConfigError('telemetry.traces.endpoint', `is not a valid URL: "${tr.endpoint}"`);
  }
  if (endpoint.protocol !== 'http:' && endpoint.protocol !== 'https:') {
    throw new ConfigError('telemetry.traces.endpoint', `must be an http:// or https:// URL, got ${endpoint.protocol}//`);
  }
  const headers: Record<string, string> = {};
  const seen = new Set<string>();
  tr.headers.forEach((h, i) => {
    if (!HEADER_NAME.test(h.name)) throw new ConfigError(`telemetry.traces.headers[${i}].name`, `"${h.name}" is not an HTTP header name`);
    if (seen.has(h.name.toLowerCase())) throw new ConfigError(`telemetry.traces.headers[${i}].name`, `header ${h.name} is listed twice`);
    if (/[\r\n]/.test(h.value)) throw new ConfigError(`telemetry.traces.headers[${i}].value`, 'must not contain a line break');
    seen.add(h.name.toLowerCase());
    headers[h.name] = h.value;
  });
  return {
    traces: {
      enabled: tr.enabled,
      endpoint: tr.endpoint,
      serviceName: tr.serviceName,
      /** Sent with every export request: authentication, mostly (their values are secrets). */
      headers,
      batchDelayMs: ms(tr.batchDelay),
      exportTimeoutMs: ms(tr.exportTimeout),
      maxQueueSize: tr.maxQueueSize,
    },
  };
}

/** A template the validation already parsed once. */
function template(text: string): Template {
  return parseTemplate(text);
}
