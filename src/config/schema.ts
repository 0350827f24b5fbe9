import { type TSchema, Type as T } from '@sinclair/typebox';
import { ConfigError } from '../errors.js';
import { MAX_SHARDS, checkTables, exportHeaders, pgHosts, shardNames, tableOf } from './rules.js';
import { sink } from './schema-sink.js';
import {
  backoff,
  bool,
  defaulted,
  duration,
  type Filled,
  identifier,
  int,
  maybeSection,
  oneOf,
  optSecret,
  optSection,
  required,
  ruled,
  secretFile,
  section,
  size,
  str,
  withDefault,
} from './schema-kit.js';

/**
 * THE CONFIG, DECLARED ONCE. Every key of the YAML file, with its type, default, range and
 * meaning, is declared here and nowhere else. From this one declaration come:
 * - the TypeScript type of the file as written (`ConfigInput`);
 * - the validation, with its errors (validate.ts: unknown keys, types, ranges, one line that
 *   names the YAML path);
 * - the JSON Schema editors use (`config/outboxd.schema.json`, `npm run schema`, schema-json.ts);
 * - the check that docs/config.md documents exactly these keys and defaults (a test);
 * - the Config the code uses, and its type: compile.ts walks this declaration (durations in
 *   ms, sizes in bytes, templates parsed, files read) and applies each section's rule
 *   (`ruled`: the checks that span keys, in rules.ts and auth.ts); config.ts names the types.
 *
 * outboxd's own annotations ride along as `x-` keywords, which JSON Schema ignores:
 * - `x-kind`: duration (`500ms`, `10s`), size (`64MiB`), identifier, template, tls;
 * - `x-unit`: `s` for a duration the code takes in whole seconds;
 * - `x-min`/`x-max`: a range in ms (durations) or bytes (sizes);
 * - `x-exclusive`: sibling keys that may not be set together (a secret and its file);
 * - `x-one-of`: sibling keys of which one must be set;
 * - `x-split`: a string that holds a comma-separated list (`"k1:9092,k2:9092"`);
 * - `x-secret`: the key holds a secret (value), a URL with one (url) or the file of one (file);
 * - `x-file`: the key names a file whose text the code takes (a CA, a certificate);
 * - `x-compile`: a section's rule (a function, so absent from the JSON Schema).
 * The builders are in schema-kit.ts, the sink section in schema-sink.ts, the TLS and SASL
 * sections in schema-auth.ts.
 */

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
    postgres: ruled(
      {
        url: required('The connection URL (postgres:// or postgresql://), for the admin and the replication connection.', {
          'x-secret': 'url',
        }),
        password: optSecret("Overrides the URL's password."),
        passwordFile: secretFile("Overrides the URL's password, read from this file."),
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
        shard: maybeSection(
          {
            index: T.Integer({
              minimum: 0,
              maximum: MAX_SHARDS - 1,
              description: "This relay's shard, 0-based: it relays the keys that hash to it.",
            }),
            count: T.Integer({ minimum: 1, maximum: MAX_SHARDS, description: 'How many shards the outbox is split into.' }),
          },
          "PostgreSQL 15+: relay one hash shard of the outbox's keys, through the publication <publication>_<index>_of_<count> (a row filter) and the slot <slot>_<index>_of_<count> (docs/adr/0020-shards.md).",
        ),
      },
      ({ url, heartbeat, shard, ...p }, _input, at) => ({
        url,
        ...pgHosts(url),
        ...p,
        ...shardNames(p, shard, at),
        heartbeatIntervalMs: heartbeat.intervalMs,
        heartbeatPrefix: heartbeat.prefix,
      }),
      'The database and the replication slot.',
      { 'x-exclusive': [['password', 'passwordFile']] },
    ),
    outbox: defaulted(
      ruled(
        {
          tables: withDefault(
            T.Array(
              ruled({ name: required('`table` or `schema.table`.'), columns }, (t, _, at) => tableOf(at, t.name, t.columns)),
              {
                description: 'The outbox tables (default: public.outbox).',
                default: [{ name: 'public.outbox' }],
              },
            ),
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
        },
        (o) => {
          checkTables(o.tables, o.messages.enabled);
          return o;
        },
      ),
    ),
    pipeline: defaulted(
      ruled(
        {
          maxInFlightMessages: int(5_000, 'The most messages read from the WAL and not yet confirmed; reading pauses at the bound.', {
            min: 1,
          }),
          maxInFlightBytes: size('64MiB', 'The same bound in bytes.', { min: 1024 }),
          batchMaxMessages: int(2_000, 'The most messages handed to the broker at once.', { min: 1, max: 100_000 }),
          batchMaxBytes: size('4MiB', 'The most bytes per batch.', { min: 1024 }),
          linger: duration('5ms', 'How long a partial batch waits for more messages.', { min: 0, max: 10_000 }),
          retry: backoff('200ms', '30s', 'after a retriable publish or dead-letter failure'),
        },
        (p) => {
          if (p.maxInFlightMessages < p.batchMaxMessages) {
            throw new ConfigError('pipeline.maxInFlightMessages', `must be at least pipeline.batchMaxMessages (${p.batchMaxMessages})`);
          }
          return p;
        },
      ),
    ),
    sink,
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
      traces: defaulted(
        ruled(
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
                  value: required('Its value; a secret as ${VAR} or ${file:/path}.', { 'x-secret': 'value' }),
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
          (t) => ({ ...t, headers: exportHeaders(t.endpoint, t.headers) }),
          'OpenTelemetry traces through the relay (docs/tracing.md).',
        ),
      ),
    }),
  },
  'outboxd configuration',
);

/** The config file as written, after interpolation and validation, with every default filled in. */
export type ConfigInput = Filled<typeof ConfigSchema>;

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
