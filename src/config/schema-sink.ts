import { Type as T } from '@sinclair/typebox';
import { ConfigError } from '../errors.js';
import { compile } from './compile.js';
import { defaultKafkaWorkers } from './cores.js';
import { amqpUrl, shardName } from './rules.js';
import { kafkaSasl, tlsFiles } from './schema-auth.js';
import {
  bool,
  defaulted,
  duration,
  int,
  maybe,
  oneOf,
  optSecret,
  optStr,
  optTemplate,
  type Root,
  required,
  ruled,
  seconds,
  secretFile,
  section,
  size,
  str,
  template,
} from './schema-kit.js';
import { parseTemplate, sourceTemplateProblem } from './template.js';
import { validate } from './validate.js';

/** The sink section of the config declaration (schema.ts): the broker, its connection and its rules. */

const stdout = section(
  {
    destination: template('outbox.event.{aggregatetype}', 'The destination field of each JSON line (a template).'),
    deadLetterDestination: str('outbox.deadletter', 'The destination of dead-letter lines.'),
  },
  'stdout (sink.type: stdout).',
);

export const sink = defaulted(
  ruled(
    {
      type: oneOf(['kafka', 'rabbitmq', 'stdout'], 'stdout', 'The broker.'),
      stallTimeout: duration('5s', 'A call to the broker unanswered this long makes the sink stalled (not ready) until it answers.', {
        min: 100,
      }),
      kafka: maybe(
        ruled(
          {
            brokers: T.Array(T.String({ minLength: 1 }), {
              description: 'The bootstrap brokers, host:port (a string may hold a comma-separated list).',
              minItems: 1,
              'x-split': ',',
            }),
            clientId: str('outboxd', 'The Kafka client id.'),
            topic: template('outbox.event.{aggregatetype}', 'The topic per message (a template).'),
            deadLetterTopic: str('outbox.deadletter', 'The topic for dead letters.'),
            compression: oneOf(
              ['none', 'gzip', 'snappy', 'lz4', 'zstd'],
              'none',
              'Batch compression, on every Kafka path (docs/adr/0017). zstd needs Kafka 2.1+; lz4 is the cheapest in CPU, zstd stores the fewest bytes.',
            ),
            maxMessageBytes: size('1MiB', "The broker's or topic's max.message.bytes: a bigger message is poison.", { min: 1024 }),
            connectionTimeout: duration('10s', 'The kafkajs connection timeout.', { min: 100 }),
            requestTimeout: duration('30s', 'The kafkajs request timeout.', { min: 100 }),
            autoCreateTopics: bool(true, 'Ask the broker to create a topic that does not exist (the broker decides).'),
            delivery: oneOf(
              ['at-least-once', 'exactly-once'],
              'at-least-once',
              'exactly-once: each batch is one Kafka transaction with a checkpoint record; read_committed consumers see every event once.',
            ),
            checkpointTopic: str(
              'outboxd.checkpoints',
              'exactly-once: the compacted topic of checkpoints; created at start when missing and autoCreateTopics is true, or by outboxd setup.',
            ),
            checkpointTopicReplicationFactor: T.Optional(
              T.Integer({
                description:
                  "exactly-once: the checkpoint topic's replication factor when outboxd creates it; default: the cluster's default.replication.factor.",
                minimum: 1,
                maximum: 32767,
              }),
            ),
            checkpointTopicMinInsyncReplicas: T.Optional(
              T.Integer({
                description:
                  "exactly-once: the checkpoint topic's min.insync.replicas when outboxd creates it; default: not set, the cluster's min.insync.replicas applies.",
                minimum: 1,
                maximum: 32767,
              }),
            ),
            transactionalId: optStr(
              "exactly-once: the producer transactional.id (default outboxd-<slot>, the shard's slot when sharded; a set id gains _<index>_of_<count>); a second relay with it fences the first.",
            ),
            transactionTimeout: duration('60s', 'exactly-once: the broker aborts a transaction left open this long.', { min: 1000 }),
            transactionMaxMessages: int(
              10_000,
              'exactly-once: the most messages in one transaction. While the relay is busy a transaction takes every batch that is queued, up to this and to transactionMaxBytes; each transaction costs the broker a fixed amount, so fewer, larger ones cost it less per event.',
              { min: 1, max: 1_000_000 },
            ),
            transactionMaxBytes: size('32MiB', 'exactly-once: the most bytes in one transaction (see transactionMaxMessages).', {
              min: 1024,
            }),
            workers: T.Optional(
              T.Integer({
                description:
                  'at-least-once: worker threads that publish, each owning a share of the partitions; default: the usable cores (CPU quota included) minus 2, from 0 to 2; each started only for the partitions written to, about 80 MB each; 0 publishes on the main thread.',
                minimum: 0,
                maximum: 64,
              }),
            ),
            ssl: tlsFiles('the brokers'),
            sasl: kafkaSasl,
          },
          (k, _, at, root) => {
            k.brokers.forEach((b, i) => {
              if (!/^[^\s:]+:\d{1,5}$/.test(b)) throw new ConfigError(`${at}.brokers[${i}]`, `must be host:port, got "${b}"`);
            });
            // MSK's IAM listeners (port 9098, 9198 public) speak TLS only.
            if (k.sasl?.mechanism === 'aws-msk-iam' && k.ssl === undefined) {
              throw new ConfigError(
                `${at}.ssl`,
                'is required with sasl mechanism aws-msk-iam: MSK IAM listeners accept TLS only (ssl: true)',
              );
            }
            return {
              ...k,
              // One per shard: shards sharing one would fence each other.
              transactionalId: shardTransactionalId(k.transactionalId, root),
              /** Publishing worker threads (sink/kafka/workers.ts); 0: on the main thread. */
              workers: k.workers ?? defaultKafkaWorkers(),
            };
          },
          'Kafka (sink.type: kafka).',
        ),
      ),
      rabbitmq: maybe(
        ruled(
          {
            url: required('The broker URL (amqp:// or amqps://); its path is the vhost.', { 'x-secret': 'url' }),
            authMechanism: oneOf(
              ['plain', 'external'],
              'plain',
              "plain: the URL's user and password; external: the TLS client certificate (amqps:// with tls.certFile and tls.keyFile; the broker needs rabbitmq_auth_mechanism_ssl).",
            ),
            password: optSecret("Overrides the URL's password."),
            passwordFile: secretFile("Overrides the URL's password, read from this file."),
            exchange: required('The exchange outboxd publishes to.'),
            exchangeType: oneOf(['topic', 'direct', 'fanout', 'x-consistent-hash'], 'topic', 'The exchange type.'),
            declare: bool(false, 'Declare the exchange (and the dead-letter exchange) at connect time.'),
            routingKey: optTemplate(
              'The routing key per message (a template). Default {aggregatetype}.{type}; {aggregateid} for x-consistent-hash.',
            ),
            deadLetterExchange: str('outbox.deadletter', 'The exchange for dead letters.'),
            deadLetterRoutingKey: optStr("The routing key for dead letters (default: the message's own, or poison)."),
            channels: int(
              1,
              'Confirm channels on the one connection. A message takes the channel of its shard key (aggregateid), so per-key order holds; a batch is confirmed when every channel confirmed its part. With one queue more channels do not pay; they are for several queues (x-consistent-hash) on a broker with cores to spare.',
              { min: 1, max: 64 },
            ),
            confirmTimeout: duration('30s', 'A batch whose publisher confirms do not all arrive by then fails and is retried.', {
              min: 100,
            }),
            heartbeat: seconds('10s', 'The AMQP heartbeat, in whole seconds; 0 disables it.', { min: 0, max: 3_600_000 }),
            connectionTimeout: duration('10s', 'The connection timeout.', { min: 100 }),
            maxMessageBytes: size('16MiB', "The broker's max_message_size: a bigger message is poison.", { min: 1024 }),
            tls: tlsFiles('amqps:// URLs'),
          },
          ({ url, password, routingKey, deadLetterRoutingKey, ...r }, input, at) => ({
            /** amqp:// or amqps:// URL with the password in it; the vhost is its path. */
            url: amqpUrl(at, url, password, r.authMechanism, r.tls, input),
            ...r,
            routingKey: routingKey ?? parseTemplate(r.exchangeType === 'x-consistent-hash' ? '{aggregateid}' : '{aggregatetype}.{type}'),
            /** null: the message's own routing key (or `poison`). */
            deadLetterRoutingKey: deadLetterRoutingKey ?? null,
          }),
          'RabbitMQ (sink.type: rabbitmq).',
          { 'x-exclusive': [['password', 'passwordFile']] },
        ),
      ),
      stdout: maybe(stdout),
      cloudevents: defaulted(
        ruled(
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
          (c, _, at) => {
            const problem = sourceTemplateProblem(c.source);
            if (problem !== null) throw new ConfigError(`${at}.source`, problem);
            return c;
          },
          'CloudEvents (docs/config.md#sinkcloudevents).',
        ),
      ),
    },
    (s, _, at, root) => {
      for (const other of ['kafka', 'rabbitmq', 'stdout'] as const) {
        if (other !== s.type && s[other] !== undefined) {
          throw new ConfigError(`${at}.${other}`, `is set but sink.type is ${s.type}; remove it or set sink.type: ${other}`);
        }
      }
      const { type, stallTimeoutMs, cloudevents } = s;
      if (type === 'kafka') {
        if (s.kafka === undefined) throw new ConfigError(`${at}.kafka.brokers`, 'is required: a list of host:port');
        return { type, stallTimeoutMs, cloudevents, kafka: s.kafka };
      }
      if (type === 'rabbitmq') {
        if (s.rabbitmq === undefined) throw new ConfigError(`${at}.rabbitmq.url`, 'is required');
        return { type, stallTimeoutMs, cloudevents, rabbitmq: s.rabbitmq };
      }
      const stdoutConfig = s.stdout ?? compile(stdout, validate(stdout, {}, `${at}.stdout`), `${at}.stdout`, root);
      return { type, stallTimeoutMs, cloudevents, stdout: stdoutConfig };
    },
  ),
);

/** sink.kafka.transactionalId: outboxd-<slot> by default; each shard's its own (`_<index>_of_<count>`). */
function shardTransactionalId(set: string | undefined, root: Root): string {
  const shard = root.postgres.shard;
  const base = set ?? `outboxd-${root.postgres.slot}`;
  return shard === undefined ? base : shardName(base, shard);
}
