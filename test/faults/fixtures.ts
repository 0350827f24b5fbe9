/**
 * Shared pieces of the fault suite: a relay + sink + reader bundle for Kafka and for RabbitMQ,
 * so each scenario is written once and run against both sinks.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { type Marker, parseMarker } from '../../src/postgres/marker.js';
import amqp from 'amqplib';
import kafkajs from 'kafkajs';
import { expect } from 'vitest';
import {
  KAFKA_TEST_WORKERS,
  type OutboxRow,
  type Ordered,
  RelayProcess,
  TestDb,
  TopicReader,
  sleep,
  until,
  writeConfig,
  writeOutbox,
} from '../integration/support.js';

export { orderAndDuplicates } from '../integration/support.js';
import { pgUrl, kafkaBrokers, rabbitmqUrl } from '../harness/services.js';

export type SinkKind = 'kafka' | 'rabbitmq';

/** What a scenario reads back: every delivered message's id, key, sequence and position. */
export interface Delivered extends Ordered {
  headers: Record<string, string>;
  /** The body's bytes as the broker holds them. */
  value: Buffer;
  /** RabbitMQ: the content-type property (Kafka has none; its content-type, if any, is a header). */
  contentType?: string;
  /** RabbitMQ: the routing key it was published with. */
  routingKey?: string;
}

export interface Reader {
  delivered(): Delivered[];
  /**
   * Resolves once the reader holds everything the broker held when it was called, dead letters
   * included: the positive sign that nothing more is on its way. Kafka: the reader reached the
   * end of every partition (TopicReader.waitCaughtUp). RabbitMQ: a sentinel sent to the tail of
   * each queue came back, so every message queued before it was delivered first.
   */
  caughtUp(): Promise<void>;
  close(): Promise<void>;
}

export interface Bundle {
  db: TestDb;
  kind: SinkKind;
  types: string[];
  reader: Reader;
  configFile: string;
  httpPort: number;
  start(env?: NodeJS.ProcessEnv): RelayProcess;
  /** A second instance of the same config on another HTTP port. */
  startOn(httpPort: number, env?: NodeJS.ProcessEnv): RelayProcess;
  cleanup(): Promise<void>;
  /** `await using b = await bundle(...)` cleans up when the test ends. */
  [Symbol.asyncDispose](): Promise<void>;
}

export interface BundleOptions {
  kind: SinkKind;
  pgUrl?: string;
  /** Override the broker address the relay uses (a proxy), but read directly. */
  relayBroker?: string;
  /** Rewrites the database URL the relay uses (to go through a proxy). */
  pgUrlRewrite?: (dbUrl: string) => string;
  amqpUrl?: string;
  kafkaBrokers?: string;
  extra?: string;
  sinkExtra?: string;
  /** More `postgres:` keys, indented two spaces (e.g. `  onLostSlot: recover-from-outbox\n`). */
  postgresExtra?: string;
  /** More `outbox:` keys, indented two spaces (e.g. an `  prune:` section). */
  outboxExtra?: string;
  onPoison?: 'halt' | 'dead-letter';
  ddl?: string[];
  encoding?: 'UTF8' | 'SQL_ASCII';
  /** Outbox tables (default public.outbox). */
  tables?: string[];
  /** outbox.tables[].columns, the same for every table (field: column). */
  columns?: Record<string, string>;
  /** Kafka's request timeout and RabbitMQ's confirm timeout (default 5s and 3s: fault tests want them short). */
  brokerTimeout?: string;
  /** Kafka exactly-once delivery, with a checkpoint topic of the test's own (created compacted). */
  exactlyOnce?: boolean;
  /** Kafka: read read_uncommitted (sees aborted transactions' records); default read_committed. */
  readUncommitted?: boolean;
  /** Kafka: the replication factor of the topics the bundle creates (default 1; 3 on a cluster). */
  replicationFactor?: number;
  /**
   * RabbitMQ: `sink.rabbitmq.deadLetterRoutingKey`, and the dead-letter queue bound to it (default
   * `poison`). null leaves it unset, as a new user has it: a dead letter then takes its message's
   * own routing key, and the dead-letter queue is bound with `#`.
   */
  deadLetterRoutingKey?: string | null;
  /** RabbitMQ: the pattern binding the main queue (default `#`: every message routes). */
  mainBinding?: string;
  /** The `pipeline:` keys, indented two spaces; default the fault suite's small bounds ('' keeps outboxd's defaults). */
  pipeline?: string;
}

/** Small in-flight bounds, so that fault tests reach them quickly. */
const FAULT_PIPELINE = `  maxInFlightMessages: 2000
  maxInFlightBytes: 4MiB
  batchMaxMessages: 500
`;

export async function bundle(o: BundleOptions): Promise<Bundle> {
  const stack = new AsyncDisposableStack();
  const db = stack.use(await new TestDb(o.pgUrl ?? (await pgUrl(15))).create(o.ddl, { encoding: o.encoding }));
  const tag = db.name.slice(2, 8);
  const types = [`alpha_${tag}`, `beta_${tag}`];
  let reader: Reader;
  let sinkYaml: string;
  if (o.kind === 'kafka') {
    const brokers = (o.kafkaBrokers ?? (await kafkaBrokers()).join(',')).split(',');
    const r = new TopicReader(brokers, { readUncommitted: o.readUncommitted ?? false, replicationFactor: o.replicationFactor });
    await r.createTopics([...types.map((t) => `outbox.event.${t}`), `dlq_${tag}`]);
    if (o.exactlyOnce) await r.createTopics([`ckpt_${tag}`], 1, [{ name: 'cleanup.policy', value: 'compact' }]);
    await r.start([...types.map((t) => `outbox.event.${t}`), `dlq_${tag}`]);
    reader = {
      delivered: () =>
        r.messages.map((m) => ({
          id: m.headers.id ?? '',
          key: m.key ?? '',
          seq: safeSeq(m.value),
          stream: `${m.topic}/${m.partition}`,
          position: Number(m.offset),
          headers: m.headers,
          value: m.valueBytes,
        })),
      caughtUp: () => r.waitCaughtUp([...types.map((t) => `outbox.event.${t}`), `dlq_${tag}`]),
      close: () => r.stop(),
    };
    sinkYaml = `  type: kafka
  kafka:
    brokers: [${o.relayBroker ?? brokers.join(', ')}]
    deadLetterTopic: dlq_${tag}
    requestTimeout: ${o.brokerTimeout ?? '5s'}
    connectionTimeout: 2s
    workers: \${OUTBOXD_TEST_WORKERS:-${KAFKA_TEST_WORKERS}}
${o.exactlyOnce ? `    delivery: \${OUTBOXD_TEST_DELIVERY:-exactly-once}\n    checkpointTopic: \${OUTBOXD_TEST_CHECKPOINT_TOPIC:-ckpt_${tag}}\n` : ''}${o.sinkExtra ?? ''}`;
  } else {
    const url = o.amqpUrl ?? (await rabbitmqUrl());
    const deadLetterKey = o.deadLetterRoutingKey === undefined ? 'poison' : o.deadLetterRoutingKey;
    const q = await AmqpReader.open(url, [
      [`ex_${tag}`, `q_${tag}`, o.mainBinding ?? '#'],
      [`dlx_${tag}`, `dlq_${tag}`, deadLetterKey ?? '#'],
    ]);
    reader = q;
    sinkYaml = `  type: rabbitmq
  rabbitmq:
    url: ${o.relayBroker ?? url}
    exchange: ex_${tag}
    declare: true
    deadLetterExchange: dlx_${tag}
${deadLetterKey === null ? '' : `    deadLetterRoutingKey: ${deadLetterKey}\n`}    confirmTimeout: ${o.brokerTimeout ?? '3s'}
    heartbeat: 2s
    connectionTimeout: 2s
${o.sinkExtra ?? ''}`;
  }
  stack.defer(() => reader.close());
  const cfg = await writeConfig(
    (port) => `postgres:
  url: ${o.pgUrlRewrite ? o.pgUrlRewrite(db.url) : db.url}
  slot: ${db.slot}
  statusInterval: 1s
  heartbeat:
    interval: 1s
  lagPollInterval: 500ms
  progressTimeout: \${OUTBOXD_TEST_PROGRESS_TIMEOUT:-5m}
  connectTimeout: 2s
  reconnect: { initial: 100ms, max: 1s }
${o.postgresExtra ?? ''}outbox:
  tables:
${(o.tables ?? ['public.outbox']).map((t) => `    - name: ${t}\n${columnsYaml(o.columns)}`).join('')}  onPoison: ${o.onPoison ?? 'halt'}
${o.outboxExtra ?? ''}pipeline:
${o.pipeline ?? FAULT_PIPELINE}  retry: { initial: 100ms, max: 1s }
sink:
${sinkYaml}
http:
  host: 127.0.0.1
  port: \${OUTBOXD_HTTP_PORT:-${port}}
shutdown:
  grace: 20s
${o.extra ?? ''}`,
  );
  stack.use(cfg);
  const relays: RelayProcess[] = [];
  // Relays first, then the reader, the config and the database (the stack unwinds in reverse).
  const cleanup = async () => {
    for (const r of relays) await r[Symbol.asyncDispose]();
    await stack.disposeAsync();
  };
  return {
    db,
    kind: o.kind,
    types,
    reader,
    configFile: cfg.file,
    httpPort: cfg.port,
    start(env = {}) {
      const relay = new RelayProcess(cfg.file, cfg.port, env);
      relays.push(relay);
      return relay;
    },
    startOn(httpPort: number, env = {}) {
      const relay = new RelayProcess(cfg.file, httpPort, { ...env, OUTBOXD_HTTP_PORT: String(httpPort) });
      relays.push(relay);
      return relay;
    },
    cleanup,
    [Symbol.asyncDispose]: cleanup,
  };
}

function columnsYaml(columns: Record<string, string> | undefined): string {
  if (columns === undefined) return '';
  return `      columns:\n${Object.entries(columns)
    .map(([field, column]) => `        ${field}: ${JSON.stringify(column)}\n`)
    .join('')}`;
}

function safeSeq(value: string): number {
  try {
    return (JSON.parse(value) as { seq?: number }).seq ?? 0;
  } catch {
    return 0;
  }
}

/** The header that marks caughtUp()'s sentinel messages. */
const SENTINEL = 'x-outboxd-test-sentinel';

/** A topic exchange, a durable queue and the pattern that binds them. */
type Binding = readonly [exchange: string, queue: string, pattern: string];

/**
 * Consumes the main queue and the dead-letter queue, each bound to its exchange. Reconnects by
 * itself when the broker goes away (outage tests); durable queues keep what arrives meanwhile.
 */
class AmqpReader implements Reader {
  private readonly got: Delivered[] = [];
  private model: amqp.ChannelModel | null = null;
  private closing = false;
  private readonly counters = new Map<string, number>();
  /** The sentinels caughtUp() sent that came back (never in `got`). */
  private readonly sentinels = new Set<string>();
  private constructor(
    private readonly url: string,
    private readonly bindings: readonly Binding[],
  ) {}

  static async open(url: string, bindings: readonly Binding[]): Promise<AmqpReader> {
    const r = new AmqpReader(url, bindings);
    await r.connect();
    return r;
  }

  private reconnectSoon(): void {
    if (this.closing) return;
    // Pacing: the reader's reconnect backoff while the broker is away, not a wait.
    setTimeout(() => {
      this.connect().catch(() => this.reconnectSoon());
    }, 500);
  }

  private async connect(): Promise<void> {
    const model = await amqp.connect(this.url);
    this.model = model;
    model.on('error', () => undefined);
    model.on('close', () => {
      if (this.model === model) {
        this.model = null;
        this.reconnectSoon();
      }
    });
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    for (const [ex, q, pattern] of this.bindings) {
      await ch.assertExchange(ex, 'topic', { durable: true });
      await ch.assertQueue(q, { durable: true });
      await ch.bindQueue(q, ex, pattern);
      await ch.consume(q, (msg) => {
        if (!msg) return;
        const sentinel = msg.properties.headers?.[SENTINEL];
        if (sentinel !== undefined) {
          this.sentinels.add(String(sentinel));
          ch.ack(msg);
          return;
        }
        const n = this.counters.get(q) ?? 0;
        this.counters.set(q, n + 1);
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(msg.properties.headers ?? {})) headers[k] = String(v);
        this.got.push({
          id: String(msg.properties.messageId),
          key: headers.aggregateid ?? '',
          seq: safeSeq(msg.content.toString()),
          stream: q,
          position: n,
          headers,
          value: msg.content,
          contentType: msg.properties.contentType,
          routingKey: msg.fields.routingKey,
        });
        ch.ack(msg);
      });
    }
  }

  delivered(): Delivered[] {
    return this.got;
  }

  /**
   * Sends a sentinel straight to the tail of each queue and waits until every one has come back:
   * a queue delivers in order to its one consumer, so all it held before is in `delivered()`.
   */
  async caughtUp(timeoutMs = 30_000): Promise<void> {
    const id = randomUUID();
    const queues = this.bindings.map(([, q]) => q);
    await until(
      'sentinels sent to every queue',
      async () => {
        const ch = await (this.model as amqp.ChannelModel).createConfirmChannel();
        try {
          for (const q of queues) ch.sendToQueue(q, Buffer.alloc(0), { persistent: true, headers: { [SENTINEL]: `${id}/${q}` } });
          await ch.waitForConfirms();
        } finally {
          await ch.close().catch(() => undefined);
        }
        return true;
      },
      timeoutMs,
      200,
      { tolerateErrors: true },
    );
    await until('the sentinel back from every queue', async () => queues.every((q) => this.sentinels.has(`${id}/${q}`)), timeoutMs, 20);
  }

  async close(): Promise<void> {
    this.closing = true;
    await this.model?.close().catch(() => undefined);
  }
}

/** Starts the relay and, once it is ready, writes `total` rows over `keys` keys and waits until all are delivered. */
export async function startDelivering(b: Bundle, total: number, keys: number): Promise<{ relay: RelayProcess; rows: OutboxRow[] }> {
  const relay = b.start();
  await relay.ready();
  const rows = await writeOutbox(b.db.client, { total, keys, types: b.types });
  await waitDelivered(
    b.reader,
    rows.map((r) => r.id),
  );
  return { relay, rows };
}

/** Waits until every id has been delivered at least once. */
/**
 * One row every `everyMs` into public.outbox (first type) until stop(): a publish is always
 * waiting for the broker. `keys` > 1 spreads the rows over keys k0..k(n-1), each row's payload
 * carrying its per-key sequence (`{"seq":n}`) for order checks; 1 writes key 'k' and `{}`.
 * `ids` are the rows written, in order.
 */
export function steadyWriter(b: Bundle, everyMs = 50, keys = 1): { ids: string[]; stop(): Promise<void> } {
  const ids: string[] = [];
  const seqs = new Map<string, number>();
  let writing = true;
  const done = (async () => {
    for (let i = 0; writing; i++) {
      const key = keys > 1 ? `k${i % keys}` : 'k';
      const seq = (seqs.get(key) ?? 0) + 1;
      seqs.set(key, seq);
      const id = uuid();
      await b.db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, 'T', $4)`, [
        id,
        b.types[0],
        key,
        keys > 1 ? JSON.stringify({ seq }) : '{}',
      ]);
      ids.push(id);
      await sleep(everyMs); // pacing: the write rate
    }
  })();
  return {
    ids,
    stop: async () => {
      writing = false;
      await done;
    },
  };
}

/** Drops the slot out from under a running relay: terminate its walsender, drop before it reconnects. */
export async function dropSlotUnderRelay(b: Bundle): Promise<void> {
  await until(
    'slot dropped',
    async () => {
      await b.db.client.query(
        'SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL',
        [b.db.slot],
      );
      try {
        await b.db.client.query('SELECT pg_drop_replication_slot($1)', [b.db.slot]);
        return true;
      } catch {
        return false;
      }
    },
    30_000,
    20,
  );
}

/** Kafka: sets a topic's `max.message.bytes`, so that the broker refuses what the relay lets through. */
export async function limitTopicMessageBytes(topic: string, bytes: number): Promise<void> {
  const admin = new kafkajs.Kafka({ brokers: await kafkaBrokers(), logLevel: kafkajs.logLevel.NOTHING }).admin();
  await admin.connect();
  try {
    await admin.alterConfigs({
      validateOnly: false,
      resources: [
        { type: kafkajs.ConfigResourceTypes.TOPIC, name: topic, configEntries: [{ name: 'max.message.bytes', value: String(bytes) }] },
      ],
    });
  } finally {
    await admin.disconnect();
  }
}

/**
 * One Postgres transaction of one key, seq 1–4, whose second message (20 KB) is too large for a
 * topic limited to 4 KiB (limitTopicMessageBytes) and small enough for the relay's own limit
 * (1 MiB): only the broker can tell.
 */
export async function insertOneTooLarge(b: Bundle): Promise<void> {
  const payload = (n: number) => JSON.stringify({ seq: n, pad: 'x'.repeat(n === 2 ? 20_000 : 10) });
  await b.db.client.query(
    `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload)
     SELECT gen_random_uuid(), $1, 'k', 'T', p::jsonb FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n`,
    [b.types[0], [1, 2, 3, 4].map(payload)],
  );
}

/** After insertOneTooLarge under onPoison dead-letter: 1, 3 and 4 on `topic`, in order, and 2 dead-lettered as oversized. */
export async function expectOneTooLargeDeadLettered(b: Bundle, topic: string): Promise<void> {
  await until('three delivered and one dead letter', async () => b.reader.delivered().length >= 4, 30_000);
  await b.reader.caughtUp();
  const got = b.reader.delivered().map((d) => [d.stream.split('/')[0], d.seq, d.headers['outboxd.error_reason'] ?? '']);
  expect(got.filter((g) => g[0] === topic)).toEqual([
    [topic, 1, ''],
    [topic, 3, ''],
    [topic, 4, ''],
  ]);
  expect(got.filter((g) => g[0] !== topic).map((g) => g[2])).toEqual(['oversized']);
}

export async function waitDelivered(reader: Reader, ids: Iterable<string>, timeoutMs = 120_000): Promise<void> {
  const want = new Set(ids);
  let scanned = 0;
  await until(
    `${want.size} ids delivered`,
    async () => {
      const all = reader.delivered();
      for (; scanned < all.length; scanned++) want.delete((all[scanned] as Delivered).id);
      return want.size === 0;
    },
    timeoutMs,
    250,
  );
}

export const uuid = randomUUID;

/** The statements of a DDL text (e.g. `outboxd setup --print`'s), one by one, comments dropped. */
export function sqlStatements(ddl: string): string[] {
  return ddl
    .split('\n')
    .map((l) => l.replace(/--.*$/, ''))
    .join('\n')
    .split(';')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

/** The lost-slot marker of a publication (default the bundle's, outboxd), as outboxd reads it. */
export async function markerOf(b: Bundle, publication = 'outboxd'): Promise<Marker> {
  const { rows } = await b.db.client.query<{ c: string | null }>(
    `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = $1`,
    [publication],
  );
  return parseMarker(rows[0]?.c).marker;
}

/** RSS of a process in bytes, from /proc. */
export function rssBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+) kB/.exec(status);
  return m ? Number(m[1]) * 1024 : 0;
}
