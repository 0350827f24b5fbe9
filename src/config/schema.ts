import { type Static, type TArray, type TObject, type TOptional, type TSchema, Type as T } from '@sinclair/typebox';

/**
 * THE CONFIG, DECLARED ONCE. Every key of the YAML file, with its type, default, range and
 * meaning, is declared here and nowhere else. From this one declaration come:
 * - the TypeScript type of the file as written (`ConfigInput`);
 * - the validation, with its errors (validate.ts: unknown keys, types, ranges, one line that
 *   names the YAML path);
 * - the JSON Schema editors use (`config/outboxd.schema.json`, `npm run schema`);
 * - the check that docs/config.md documents exactly these keys and defaults (a test).
 * compile.ts turns the validated file into the `Config` the code uses (durations in ms, sizes in
 * bytes, secrets read), and the code's types derive from it.
 *
 * outboxd's own annotations ride along as `x-` keywords, which JSON Schema ignores:
 * - `x-kind`: duration (`500ms`, `10s`), size (`64MiB`), identifier, template, tls;
 * - `x-min`/`x-max`: a range in ms (durations) or bytes (sizes);
 * - `x-exclusive`: sibling keys that may not be set together (a secret and its file);
 * - `x-split`: a string that holds a comma-separated list (`"k1:9092,k2:9092"`).
 */

/** Duration: `500ms`, `10s`, `1.5m`, `2h`, or `0`. */
export const DURATION_PATTERN = '^\\s*(\\d+(\\.\\d+)?\\s*(ms|s|m|h)|0)\\s*$';
/** Size: `64MiB`, `1MB`, `512KiB`, `100B`, or a byte count. */
export const SIZE_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*(B|KB|MB|GB|KiB|MiB|GiB)?\\s*$';
/** Slot and publication names go into replication commands: lower-case identifiers. */
export const IDENTIFIER_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';

type Range = { min?: number; max?: number };

/**
 * A key that may be left out of the file because it has a default (or, for a section, because
 * its keys have defaults). A type-only brand: after validation it is always present.
 */
declare const DEFAULTED: unique symbol;
type Defaulted<S extends TSchema> = TOptional<S> & { readonly [DEFAULTED]: true };
const withDefault = <S extends TSchema>(s: S): Defaulted<S> => T.Optional(s) as Defaulted<S>;

const duration = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({ default: fallback, description, pattern: DURATION_PATTERN, 'x-kind': 'duration', 'x-min': range.min, 'x-max': range.max }),
  );
const size = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({ default: fallback, description, pattern: SIZE_PATTERN, 'x-kind': 'size', 'x-min': range.min, 'x-max': range.max }),
  );
const int = (fallback: number, description: string, range: Range = {}) =>
  withDefault(T.Integer({ default: fallback, description, minimum: range.min, maximum: range.max }));
const bool = (fallback: boolean, description: string) => withDefault(T.Boolean({ default: fallback, description }));
const str = (fallback: string, description: string) => withDefault(T.String({ default: fallback, description }));
const optStr = (description: string) => T.Optional(T.String({ description }));
const required = (description: string, extra: object = {}) => T.String({ description, minLength: 1, ...extra });
const identifier = (fallback: string, description: string) =>
  withDefault(T.String({ default: fallback, description, pattern: IDENTIFIER_PATTERN, 'x-kind': 'identifier' }));
const template = (fallback: string, description: string) => withDefault(T.String({ default: fallback, description, 'x-kind': 'template' }));
const optTemplate = (description: string) => T.Optional(T.String({ description, 'x-kind': 'template' }));
const enumOf = <const V extends string>(values: readonly [V, ...V[]], description: string, fallback?: V) =>
  T.Union(
    values.map((v) => T.Literal(v)),
    fallback === undefined ? { description } : { default: fallback, description },
  );
const oneOf = <const V extends string>(values: readonly [V, ...V[]], fallback: V, description: string) =>
  withDefault(enumOf(values, description, fallback));
/** A mapping that accepts only its own keys. */
const section = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  T.Object(props, { additionalProperties: false, description, ...extra });
/** A section that may be absent (its keys then take their defaults). */
const optSection = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  withDefault(section(props, description, { default: {}, ...extra }));
/** A section that may be absent and has no defaults to fill: absent stays absent. */
const maybeSection = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  T.Optional(section(props, description, extra));

const backoff = (initial: string, max: string, what: string) =>
  optSection({
    initial: duration(initial, `The first backoff ${what}.`, { min: 1 }),
    max: duration(max, 'The backoff cap: attempt n waits a random time in [b/2, b], b = min(max, initial·2^(n−1)). At least `initial`.', {
      min: 1,
    }),
  });

const tlsFiles = (what: string) =>
  T.Optional(
    T.Union(
      [
        T.Boolean(),
        section(
          {
            caFile: optStr('PEM file: the CA that signed the server certificate.'),
            certFile: optStr('PEM file: the client certificate (mutual TLS).'),
            keyFile: optStr('PEM file: the client private key (mutual TLS).'),
            keyPassphrase: optStr('The passphrase of an encrypted keyFile.'),
            keyPassphraseFile: optStr('The passphrase of an encrypted keyFile, read from this file.'),
            rejectUnauthorized: bool(true, "Verify the server's certificate."),
            servername: optStr('The TLS SNI name, when it differs from the host.'),
          },
          '',
          { 'x-exclusive': [['keyPassphrase', 'keyPassphraseFile']] },
        ),
      ],
      { description: `TLS for ${what}: true (Node's CA bundle) or the files; false, "false" or "" for none.`, 'x-kind': 'tls' },
    ),
  );

/** The SASL mechanisms of sink.kafka.sasl. */
export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512', 'oauthbearer', 'aws-msk-iam'] as const;

/** The outbox fields a table maps to columns, in the order the docs list them. */
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
] as const;
export type ColumnField = (typeof COLUMN_FIELDS)[number];

/** The outbox fields a table must have a column for; the others are optional. */
export const REQUIRED_COLUMN_FIELDS = ['id', 'aggregatetype', 'aggregateid', 'payload'] as const satisfies readonly ColumnField[];

const columns = optSection(
  {
    ...(Object.fromEntries(COLUMN_FIELDS.map((f) => [f, str(f, `The column that holds ${f}.`)])) as Record<
      ColumnField,
      ReturnType<typeof str>
    >),
    created_at: str(
      'created_at',
      "The row's creation time (timestamptz). Never published: pruning's retain and replay's --from/--to compare with it.",
    ),
  },
  'The column of each outbox field (default: the field name).',
);

export const ConfigSchema = section(
  {
    postgres: section(
      {
        url: required('The connection URL (postgres:// or postgresql://), for the admin and the replication connection.'),
        password: optStr("Overrides the URL's password."),
        passwordFile: optStr("Overrides the URL's password, read from this file."),
        slot: identifier('outboxd', 'The logical replication slot (plugin pgoutput).'),
        publication: identifier('outboxd', 'The publication of the outbox tables; its comment records the slot (the lost-slot marker).'),
        createSlot: bool(true, 'Create the slot on the first start. A recorded slot that vanished is never recreated.'),
        createPublication: bool(true, "Create the publication (FOR TABLE the outbox tables, publish = 'insert') when it is missing."),
        statusInterval: duration('10s', 'How often a standby status update with the confirmed LSN is sent even when nothing changed.', {
          min: 100,
          max: 3_600_000,
        }),
        readCoalesce: duration('1ms', 'After a read that found little waiting, wait this long before reading again; 0 reads at once.', {
          min: 0,
          max: 100,
        }),
        heartbeat: optSection({
          interval: duration('30s', 'How often the leader writes a heartbeat logical message; 0 disables them.', { min: 0 }),
          prefix: str('outboxd.heartbeat', 'The prefix of heartbeat messages.'),
        }),
        lagPollInterval: duration('10s', "How often the slot's lag, retained WAL and wal_status are read for the metrics.", { min: 100 }),
        progressTimeout: duration(
          '5m',
          "The slot's confirmed position has not moved for this long while the server's WAL is ahead of it: the relay reports itself stuck (/readyz 503, outboxd_stuck 1, a warning). Checked every lagPollInterval; 0 disables it.",
          { min: 0 },
        ),
        connectTimeout: duration('10s', 'The connection timeout of both connections.', { min: 100 }),
        statementTimeout: duration('30s', 'statement_timeout of every query on the admin connection.', { min: 100 }),
        lockTimeout: duration('10s', 'lock_timeout of the admin connection.', { min: 100 }),
        slotCreateTimeout: duration('10m', 'How long creating the slot may wait for running transactions to end.', { min: 1000 }),
        failover: bool(
          false,
          'PostgreSQL 17+: create the slot with failover = true, so that standbys with sync_replication_slots keep a copy that survives a promotion.',
        ),
        onLostSlot: oneOf(
          ['exit', 'recover-from-outbox'],
          'exit',
          'A recorded slot that vanished: exit with code 4, or create a new slot and publish again the retained rows it cannot stream.',
        ),
        reconnect: backoff('500ms', '30s', 'after a failed replication session (and between broker connection attempts at start)'),
      },
      'The database and the replication slot.',
      { 'x-exclusive': [['password', 'passwordFile']] },
    ),
    outbox: optSection({
      tables: withDefault(
        T.Array(section({ name: required('`table` or `schema.table`.'), columns }), {
          description: 'The outbox tables (default: public.outbox).',
          default: [{ name: 'public.outbox' }],
        }),
      ),
      messages: optSection({
        enabled: bool(true, 'Relay transactional pg_logical_emit_message events with the prefix.'),
        prefix: str('outbox', 'Their prefix.'),
      }),
      onPoison: oneOf(['halt', 'dead-letter'], 'halt', 'What to do with a message that cannot be mapped or published.'),
      prune: optSection(
        {
          mode: oneOf(
            ['off', 'delete', 'partitions'],
            'off',
            'Delete confirmed rows older than retain: off, delete (batched DELETEs) or partitions (drop whole daily partitions).',
          ),
          retain: duration('24h', 'Keep every row at least this long after its created_at, for replay.', { min: 0 }),
          interval: duration('1m', 'How often a pruning round starts (each needs the watermark to pass its start).', { min: 100 }),
          batchSize: int(5_000, 'delete: the most rows one DELETE removes.', { min: 1, max: 1_000_000 }),
          pause: duration('100ms', 'delete: the pause between two DELETEs.', { min: 0, max: 60_000 }),
          lockTimeout: duration('1s', 'A DELETE, DETACH or DROP that waits for a lock this long gives up this round.', { min: 10 }),
          premake: int(3, 'partitions: how many daily partitions to keep created ahead of today.', { min: 1, max: 366 }),
        },
        'Pruning confirmed rows (on the leader).',
      ),
    }),
    pipeline: optSection({
      maxInFlightMessages: int(5_000, 'The most messages read from the WAL and not yet confirmed; reading pauses at the bound.', {
        min: 1,
      }),
      maxInFlightBytes: size('64MiB', 'The same bound in bytes.', { min: 1024 }),
      batchMaxMessages: int(2_000, 'The most messages handed to the broker at once.', { min: 1, max: 100_000 }),
      batchMaxBytes: size('4MiB', 'The most bytes per batch.', { min: 1024 }),
      linger: duration('5ms', 'How long a partial batch waits for more messages.', { min: 0, max: 10_000 }),
      retry: backoff('200ms', '30s', 'after a retriable publish or dead-letter failure'),
    }),
    sink: optSection({
      type: oneOf(['kafka', 'rabbitmq', 'stdout'], 'stdout', 'The broker.'),
      stallTimeout: duration('5s', 'A call to the broker unanswered this long makes the sink stalled (not ready) until it answers.', {
        min: 100,
      }),
      kafka: maybeSection(
        {
          brokers: T.Array(T.String({ minLength: 1 }), {
            description: 'The bootstrap brokers, host:port (a string may hold a comma-separated list).',
            minItems: 1,
            'x-split': ',',
          }),
          clientId: str('outboxd', 'The Kafka client id.'),
          topic: template('outbox.event.{aggregatetype}', 'The topic per message (a template).'),
          deadLetterTopic: str('outbox.deadletter', 'The topic for dead letters.'),
          compression: oneOf(['none', 'gzip'], 'none', 'Batch compression.'),
          maxMessageBytes: size('1MiB', "The broker's or topic's max.message.bytes: a bigger message is poison.", { min: 1024 }),
          connectionTimeout: duration('10s', 'The kafkajs connection timeout.', { min: 100 }),
          requestTimeout: duration('30s', 'The kafkajs request timeout.', { min: 100 }),
          autoCreateTopics: bool(true, 'Ask the broker to create a topic that does not exist (the broker decides).'),
          delivery: oneOf(
            ['at-least-once', 'exactly-once'],
            'at-least-once',
            'exactly-once: each batch is one Kafka transaction with a checkpoint record; read_committed consumers see every event once.',
          ),
          checkpointTopic: str('outboxd.checkpoints', 'exactly-once: the compacted topic of checkpoints (outboxd setup creates it).'),
          transactionalId: optStr(
            'exactly-once: the producer transactional.id (default outboxd-<slot>); a second relay with it fences the first.',
          ),
          transactionTimeout: duration('60s', 'exactly-once: the broker aborts a transaction left open this long.', { min: 1000 }),
          workers: T.Optional(
            T.Integer({
              description:
                'at-least-once: worker threads that publish, each owning a share of the partitions; default: the usable cores (CPU quota included) minus 2, at least 0; 0 publishes on the main thread.',
              minimum: 0,
              maximum: 64,
            }),
          ),
          ssl: tlsFiles('the brokers'),
          sasl: maybeSection(
            {
              mechanism: enumOf(
                SASL_MECHANISMS,
                'The SASL mechanism: plain and scram-* take username and a password; oauthbearer takes sasl.oauthbearer; aws-msk-iam takes sasl.awsMskIam.',
              ),
              username: optStr('plain, scram-*: the SASL user name.'),
              password: optStr('plain, scram-*: the SASL password.'),
              passwordFile: optStr('plain, scram-*: the SASL password, read from this file.'),
              oauthbearer: maybeSection(
                {
                  tokenEndpoint: required('The OAuth 2.0 token endpoint (http:// or https://) of the client credentials grant.'),
                  clientId: required('The OAuth client id.'),
                  clientSecret: optStr('The OAuth client secret.'),
                  clientSecretFile: optStr('The OAuth client secret, read from this file.'),
                  clientAuth: oneOf(
                    ['basic', 'post'],
                    'basic',
                    'How the client authenticates to the token endpoint: basic (HTTP Basic, client_secret_basic) or post (client_id and client_secret in the form body).',
                  ),
                  scope: optStr('The scope to request (space-separated); none when absent.'),
                  extensions: withDefault(
                    T.Array(
                      section({
                        name: required('A SASL extension name (letters only; not auth).'),
                        value: required('Its value.'),
                      }),
                      {
                        default: [],
                        description: 'SASL/OAUTHBEARER extensions sent with the token (RFC 7628), e.g. logicalCluster and identityPoolId.',
                      },
                    ),
                  ),
                  timeout: duration('10s', 'How long one token request may take.', { min: 100, max: 300_000 }),
                },
                'oauthbearer: OIDC client credentials; the token is cached and fetched again before it expires.',
                { 'x-exclusive': [['clientSecret', 'clientSecretFile']], 'x-one-of': [['clientSecret', 'clientSecretFile']] },
              ),
              awsMskIam: maybeSection(
                {
                  region: required('The AWS region of the MSK cluster (eu-west-1).'),
                  profile: optStr('An AWS profile to take credentials from; default: the AWS SDK default credential chain.'),
                  roleArn: optStr('An IAM role to assume for the credentials.'),
                  roleSessionName: optStr('The session name when assuming roleArn (default MSKSASLDefaultSession).'),
                },
                'aws-msk-iam: AWS MSK IAM over SASL/OAUTHBEARER, signed by aws-msk-iam-sasl-signer-js.',
                { 'x-exclusive': [['profile', 'roleArn']] },
              ),
            },
            'SASL authentication.',
            { 'x-exclusive': [['password', 'passwordFile']] },
          ),
        },
        'Kafka (sink.type: kafka).',
      ),
      rabbitmq: maybeSection(
        {
          url: required('The broker URL (amqp:// or amqps://); its path is the vhost.'),
          authMechanism: oneOf(
            ['plain', 'external'],
            'plain',
            "plain: the URL's user and password; external: the TLS client certificate (amqps:// with tls.certFile and tls.keyFile; the broker needs rabbitmq_auth_mechanism_ssl).",
          ),
          password: optStr("Overrides the URL's password."),
          passwordFile: optStr("Overrides the URL's password, read from this file."),
          exchange: required('The exchange outboxd publishes to.'),
          exchangeType: oneOf(['topic', 'direct', 'fanout', 'x-consistent-hash'], 'topic', 'The exchange type.'),
          declare: bool(false, 'Declare the exchange (and the dead-letter exchange) at connect time.'),
          routingKey: optTemplate(
            'The routing key per message (a template). Default {aggregatetype}.{type}; {aggregateid} for x-consistent-hash.',
          ),
          deadLetterExchange: str('outbox.deadletter', 'The exchange for dead letters.'),
          deadLetterRoutingKey: optStr("The routing key for dead letters (default: the message's own, or poison)."),
          confirmTimeout: duration('30s', 'A batch whose publisher confirms do not all arrive by then fails and is retried.', { min: 100 }),
          heartbeat: duration('10s', 'The AMQP heartbeat, in whole seconds; 0 disables it.', { min: 0, max: 3_600_000 }),
          connectionTimeout: duration('10s', 'The connection timeout.', { min: 100 }),
          maxMessageBytes: size('16MiB', "The broker's max_message_size: a bigger message is poison.", { min: 1024 }),
          tls: tlsFiles('amqps:// URLs'),
        },
        'RabbitMQ (sink.type: rabbitmq).',
        { 'x-exclusive': [['password', 'passwordFile']] },
      ),
      stdout: maybeSection(
        {
          destination: template('outbox.event.{aggregatetype}', 'The destination field of each JSON line (a template).'),
          deadLetterDestination: str('outbox.deadletter', 'The destination of dead-letter lines.'),
        },
        'stdout (sink.type: stdout).',
      ),
      cloudevents: optSection(
        {
          mode: oneOf(
            ['off', 'binary', 'structured'],
            'off',
            "Send each event as a CloudEvent 1.0: binary (attributes in the broker binding's headers, the payload as it is) or structured (application/cloudevents+json, the payload embedded as written).",
          ),
          source: template(
            '/outboxd/{aggregatetype}',
            'The CloudEvents source attribute (a template; field values are percent-encoded; the result must be a URI-reference).',
          ),
        },
        'CloudEvents (docs/config.md#sinkcloudevents).',
      ),
    }),
    http: optSection({
      host: str('0.0.0.0', 'The listen address for /metrics, /livez and /readyz.'),
      port: int(9187, 'The listen port; 0 picks a free one.', { min: 0, max: 65535 }),
    }),
    log: optSection({
      level: oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], 'info', 'The pino log level.'),
    }),
    shutdown: optSection({
      grace: duration('30s', 'On SIGTERM, how long to wait for in-flight messages to be confirmed.', { min: 0 }),
    }),
    telemetry: optSection({
      traces: optSection(
        {
          enabled: bool(
            false,
            "A producer span per message that carries a traceparent, child of it, from commit to the broker's confirm, exported over OTLP/HTTP; the message goes out with the span's traceparent.",
          ),
          endpoint: str('http://localhost:4318/v1/traces', 'The OTLP/HTTP traces URL (protobuf), http:// or https://.'),
          serviceName: str('outboxd', 'The service.name of the spans.'),
          headers: withDefault(
            T.Array(
              section({
                name: required('An HTTP header name.'),
                value: required('Its value; a secret as ${VAR} or ${file:/path}.'),
              }),
              { default: [], description: 'HTTP headers sent with every export (authentication). Their values are redacted from logs.' },
            ),
          ),
          batchDelay: duration('5s', 'How long a finished span may wait before its batch is exported.', { min: 10, max: 600_000 }),
          exportTimeout: duration('10s', 'How long one export request may take.', { min: 100, max: 600_000 }),
          maxQueueSize: int(2_048, 'The most finished spans waiting for export; past it new spans are dropped, never the messages.', {
            min: 1,
            max: 1_000_000,
          }),
        },
        'OpenTelemetry traces through the relay (docs/tracing.md).',
      ),
    }),
  },
  'outboxd configuration',
);

/** The config file as written, after interpolation and validation, with every default filled in. */
export type ConfigInput = Filled<typeof ConfigSchema>;

/**
 * The value type of a validated schema: a defaulted key is always present, an optional one may
 * be undefined, a mapping's keys are resolved the same way.
 */
type Filled<S> =
  S extends TObject<infer P>
    ? {
        [K in keyof P]: P[K] extends Defaulted<TSchema>
          ? Value<P[K]>
          : P[K] extends TOptional<TSchema>
            ? Value<P[K]> | undefined
            : Value<P[K]>;
      }
    : Value<S>;
type Value<S> = S extends TObject ? Filled<S> : S extends TArray<infer I> ? Value<I>[] : S extends TSchema ? Static<S> : never;

/** Any scalar may be written as a `${VAR}` to be interpolated: editors must accept that. */
const INTERPOLATED = { type: 'string', pattern: '\\$\\{' };

/**
 * The JSON Schema of the config file, for editors (`config/outboxd.schema.json`): the schema
 * above as JSON, where every scalar may also be a `${VAR}` string and a string list also a single
 * comma-separated string.
 */
export function toJsonSchema(): Record<string, unknown> {
  type Node = Record<string, unknown>;
  const relax = (s: Node): Node => {
    if (s.type === 'object') {
      const props = s.properties as Record<string, Node>;
      const rules = [
        // A secret and its file: not both, and (for x-one-of) one of them.
        ...((s['x-exclusive'] as string[][] | undefined) ?? []).map((keys) => ({ not: { required: keys } })),
        ...((s['x-one-of'] as string[][] | undefined) ?? []).map((keys) => ({ anyOf: keys.map((k) => ({ required: [k] })) })),
      ];
      return {
        ...s,
        properties: Object.fromEntries(Object.entries(props).map(([k, v]) => [k, relax(v)])),
        ...(rules.length > 0 ? { allOf: rules } : {}),
      };
    }
    if (s.type === 'array') {
      const arr = { ...s, items: relax(s.items as Node) };
      return s['x-split'] ? { description: s.description, anyOf: [arr, { type: 'string' }] } : arr;
    }
    if (Array.isArray(s.anyOf)) return { ...s, anyOf: [...(s.anyOf as Node[]).map(relax), INTERPOLATED] };
    const { description, default: fallback, ...rest } = s;
    if (rest.type === 'string' && rest.pattern === undefined) return s;
    return { description, ...(fallback === undefined ? {} : { default: fallback }), anyOf: [rest, INTERPOLATED] };
  };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://outboxd.dev/config/outboxd.schema.json',
    title: 'outboxd configuration',
    ...relax(JSON.parse(JSON.stringify(ConfigSchema)) as Node),
  };
}

/** The default of a key by its YAML path (`http.port`), as the schema declares it. */
export function defaultOf(path: string): unknown {
  let node: TSchema = ConfigSchema;
  for (const key of path.split('.')) {
    const next = (node.properties as Record<string, TSchema> | undefined)?.[key];
    if (!next) throw new Error(`config schema: no key ${path}`);
    node = next;
  }
  return node.default;
}
