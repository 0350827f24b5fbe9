/**
 * Shared pieces of the integration tests: a fresh database per test, the real `outboxd` CLI as
 * a child process, an outbox writer, and a kafkajs consumer that reads everything back.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, constants, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import kafkajs from 'kafkajs';
import pg from 'pg';
import { outboxDdl } from '../../src/commands/setup.js';
import { parseConfig } from '../../src/config/load.js';
import type { TableConfig } from '../../src/config/config.js';
import { makePki, type TestPki } from '../harness/certs.js';
import { getFreePort } from '../harness/ports.js';

export const ROOT = join(import.meta.dirname, '../..');
/** The relay under test; OUTBOXD_TEST_MAIN points a run at another build (to show a test fails on an older one). */
export const MAIN = process.env.OUTBOXD_TEST_MAIN ?? join(ROOT, 'dist/main.js');

/** The outbox table the tests use: exactly what `outboxd setup --print` prints for the defaults. */
export const OUTBOX_DDL = outboxDdl(parseConfig('postgres:\n  url: postgres://u@h/db\n', {}).outbox.tables[0] as TableConfig);

/** Where scripts/install-helm.sh puts helm (npm test runs it through scripts/prereqs.sh). */
export function helmBinary(): string {
  const bin = join(process.env.OUTBOXD_CACHE ?? join(homedir(), '.cache/outboxd'), 'bin/helm');
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`helm is not installed at ${bin}: run \`bash scripts/install-helm.sh\` (needs Go; .ci/run does this)`);
  }
  return bin;
}

import { sleep, stays, until, within } from '../harness/wait.js';

export { sleep, stays, until, within };

/** A database of its own for one test, on the given server; dropped (with its slots) afterwards. */
export class TestDb {
  readonly name = `t_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  readonly slot = `s_${this.name.slice(2)}`;
  url = '';
  client!: pg.Client;
  constructor(private readonly serverUrl: string) {}

  async create(ddl: string[] = [OUTBOX_DDL], options: { encoding?: 'UTF8' | 'SQL_ASCII' } = {}): Promise<this> {
    const admin = new pg.Client({ connectionString: this.serverUrl });
    await admin.connect();
    await admin.query(
      options.encoding === 'SQL_ASCII'
        ? `CREATE DATABASE ${this.name} ENCODING 'SQL_ASCII' TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C'`
        : `CREATE DATABASE ${this.name}`,
    );
    await admin.end();
    const u = new URL(this.serverUrl);
    u.pathname = `/${this.name}`;
    this.url = u.toString();
    this.client = new pg.Client({ connectionString: this.url });
    // A server restart in a fault test must not crash the runner through an unhandled 'error'.
    this.client.on('error', () => undefined);
    await this.client.connect();
    for (const stmt of ddl) await this.client.query(stmt);
    return this;
  }

  async slotInfo(): Promise<{ confirmed: bigint; active: boolean; retained: number } | null> {
    const { rows } = await this.client.query<{ c: string; active: boolean; retained: string }>(
      `SELECT confirmed_flush_lsn::text AS c, active, (pg_current_wal_lsn() - restart_lsn)::text AS retained
         FROM pg_replication_slots WHERE slot_name = $1`,
      [this.slot],
    );
    const r = rows[0];
    if (!r) return null;
    const [hi, lo] = r.c.split('/').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
    return { confirmed: (hi << 32n) | lo, active: r.active, retained: Number(r.retained) };
  }

  /** The server's current WAL position. */
  async walLsn(): Promise<bigint> {
    const { rows } = await this.client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
    const [hi, lo] = (rows[0]?.lsn ?? '0/0').split('/').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
    return (hi << 32n) | lo;
  }

  /** Reconnects the test's own client (after a server restart). */
  async reconnect(): Promise<void> {
    await this.client.end().catch(() => undefined);
    this.client = new pg.Client({ connectionString: this.url });
    this.client.on('error', () => undefined);
    await this.client.connect();
  }

  /** `await using db = await new TestDb(url).create()` drops it when the test ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.drop();
  }

  async drop(): Promise<void> {
    await this.client?.end().catch(() => undefined);
    const admin = new pg.Client({ connectionString: this.serverUrl });
    await admin.connect();
    try {
      await admin.query(
        'SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL',
        [this.slot],
      );
      await until(
        'the terminated walsender to release the slot',
        async () =>
          (await admin.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active', [this.slot])).rows.length === 0,
        10_000,
        20,
      );
      await admin.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1', [this.name]);
      await admin.query(`DROP DATABASE IF EXISTS ${this.name} WITH (FORCE)`);
    } finally {
      await admin.end();
    }
  }
}

export interface OutboxRow {
  id: string;
  aggregatetype: string;
  aggregateid: string;
  type: string;
  seq: number;
}

/**
 * Writes `total` outbox rows over `keys` aggregates: alternately one 100-row transaction and
 * `singles` one-row transactions. Each row's payload carries its per-key sequence number, so a
 * reader can check per-key commit order.
 */
export async function writeOutbox(
  client: pg.Client,
  opts: {
    total: number;
    keys: number;
    types: string[];
    batch?: number;
    singles?: number;
    onProgress?: (written: number) => void;
    /** Prefix of the aggregate ids: a test that writes several times checks each write's keys apart. */
    keyPrefix?: string;
  },
): Promise<OutboxRow[]> {
  const batch = opts.batch ?? 100;
  const singles = opts.singles ?? 100;
  const seqs = new Map<string, number>();
  const rows: OutboxRow[] = [];
  const next = (): OutboxRow => {
    const i = rows.length;
    const aggregateid = `${opts.keyPrefix ?? ''}key-${i % opts.keys}`;
    const seq = (seqs.get(aggregateid) ?? 0) + 1;
    seqs.set(aggregateid, seq);
    const row = {
      id: randomUUID(),
      aggregatetype: opts.types[(i % opts.keys) % opts.types.length] as string,
      aggregateid,
      type: 'Tested',
      seq,
    };
    rows.push(row);
    return row;
  };
  const insert = async (rs: OutboxRow[]) => {
    const values: unknown[] = [];
    const tuples = rs.map((r, j) => {
      values.push(r.id, r.aggregatetype, r.aggregateid, r.type, JSON.stringify({ seq: r.seq, key: r.aggregateid, pad: 'x'.repeat(200) }));
      const b = j * 5;
      return `($${b + 1}, $${b + 2}, $${b + 3}, $${b + 4}, $${b + 5})`;
    });
    await client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ${tuples.join(', ')}`, values);
  };
  let bigTurn = true;
  while (rows.length < opts.total) {
    if (bigTurn) {
      const rs: OutboxRow[] = [];
      for (let j = 0; j < batch && rows.length < opts.total; j++) rs.push(next());
      await insert(rs);
    } else {
      for (let j = 0; j < singles && rows.length < opts.total; j++) await insert([next()]);
    }
    bigTurn = !bigTurn;
    opts.onProgress?.(rows.length);
  }
  return rows;
}

/** The real CLI, as a child process. */
export class RelayProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  readonly exited: Promise<number | null>;
  constructor(
    readonly configFile: string,
    readonly httpPort: number,
    env: NodeJS.ProcessEnv = {},
    /** The build to run (the upgrade test runs the previous release's). */
    main: string = MAIN,
  ) {
    if (!existsSync(main)) throw new Error(`${main} is missing: run npm run build first`);
    this.child = spawn(process.execPath, [main, 'run', '-c', configFile], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString();
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  }

  async http(path: string): Promise<{ status: number; body: string }> {
    let res: Response;
    try {
      res = await fetch(`http://127.0.0.1:${this.httpPort}${path}`);
    } catch (err) {
      // Refused mostly means the relay is gone or going: say how, not just that fetch failed.
      const ended = this.child.exitCode ?? this.child.signalCode;
      throw new Error(
        `GET ${path}: ${(err as Error).cause ?? (err as Error).message}; outboxd ${ended === null ? 'still running' : `exited (${ended})`}; stderr: ${this.stderr.slice(-2000)}`,
      );
    }
    return { status: res.status, body: await res.text() };
  }

  async ready(timeoutMs = 60_000): Promise<void> {
    await until(
      `outboxd /readyz (stderr: ${this.stderr.slice(-500)})`,
      async () => {
        if (this.child.exitCode !== null) throw new Error(`outboxd exited with ${this.child.exitCode}: ${this.stderr.slice(-1000)}`);
        return (await this.http('/readyz').catch(() => ({ status: 0 }))).status === 200;
      },
      timeoutMs,
    );
  }

  /** Reads one sample of a metric (sum over label sets matching `labels`). */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    const { body } = await this.http('/metrics');
    let sum = 0;
    for (const line of body.split('\n')) {
      if (!line.startsWith(name)) continue;
      const m = /^([a-z_]+)(\{[^}]*\})? (.+)$/.exec(line);
      if (!m || m[1] !== name) continue;
      if (Object.entries(labels).every(([k, v]) => (m[2] ?? '').includes(`${k}="${v}"`))) sum += Number(m[3]);
    }
    return sum;
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    this.child.kill(signal);
  }

  /**
   * Waits until the relay has written `n` more heartbeats: a positive sign that time passed
   * with the relay running and connected, for a test that then asserts nothing moved.
   */
  async heartbeatsPass(n = 2, timeoutMs = 30_000): Promise<void> {
    const from = await this.metric('outboxd_heartbeats_total');
    await until(`${n} heartbeats`, async () => (await this.metric('outboxd_heartbeats_total')) >= from + n, timeoutMs, 100);
  }

  /** `await using relay = new RelayProcess(...)` kills it (if still running) when the test ends. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.kill('SIGKILL');
    await this.exited;
  }

  logLines(): Array<Record<string, unknown>> {
    return this.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

/** A one-off `outboxd` command (not `run`) as a child process, for commands a test may signal mid-way. */
export class CliProcess {
  readonly child: ChildProcess;
  stdout = '';
  stderr = '';
  /** The exit code, or -1 when a signal ended it. */
  readonly exited: Promise<number>;
  constructor(args: readonly string[], env: NodeJS.ProcessEnv = {}) {
    if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: run npm run build first`);
    this.child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString();
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => this.child.once('exit', (code) => resolve(code ?? -1)));
  }

  /** Runs `outboxd ARGS` to its end. */
  static async run(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
    const p = new CliProcess(args, env);
    const code = await p.exited;
    return { code, stdout: p.stdout, stderr: p.stderr };
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

/**
 * Writes a config file into a temp dir and returns its path and the HTTP port it uses;
 * `await using cfg = await writeConfig(...)` removes the dir when the test ends.
 */
export async function writeConfig(
  yaml: (httpPort: number) => string,
): Promise<{ file: string; port: number; dir: string } & AsyncDisposable> {
  const dir = mkdtempSync(join(tmpdir(), 'outboxd-it-'));
  const port = await getFreePort();
  const file = join(dir, 'outboxd.yaml');
  writeFileSync(file, yaml(port));
  return { file, port, dir, [Symbol.asyncDispose]: async () => removeDir(dir) };
}

/** `await using _ = defer(fn)`: runs `fn` when the scope ends, for a cleanup without an object of its own. */
export function defer(fn: () => Promise<unknown> | unknown): AsyncDisposable {
  return { [Symbol.asyncDispose]: async () => void (await fn()) };
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

export interface Consumed {
  topic: string;
  partition: number;
  offset: string;
  key: string | null;
  value: string;
  /** The value's bytes as the broker holds them (for byte-for-byte comparisons). */
  valueBytes: Buffer;
  headers: Record<string, string>;
}

/**
 * Reads topics from the beginning with a kafkajs consumer group until `stop()`: read_committed
 * (kafkajs's default), or read_uncommitted, which also sees the records of aborted transactions.
 */
export class TopicReader {
  readonly messages: Consumed[] = [];
  private consumer: kafkajs.Consumer;
  private readonly kafka: kafkajs.Kafka;
  /**
   * The next offset to read in each partition, control records (transaction markers) included:
   * under exactly-once a partition ends with a commit marker no message shows.
   */
  private readonly next = new Map<string, bigint>();
  private readonly replicationFactor: number;
  /** `replicationFactor`: of the topics createTopics makes (default 1, the lone test broker's). */
  constructor(brokers: string[], opts: { readUncommitted?: boolean; replicationFactor?: number } = {}) {
    this.replicationFactor = opts.replicationFactor ?? 1;
    this.kafka = new kafkajs.Kafka({ clientId: 'outboxd-test-reader', brokers, logLevel: kafkajs.logLevel.NOTHING });
    this.consumer = this.kafka.consumer({
      groupId: `reader-${randomUUID()}`,
      maxWaitTimeInMs: 100,
      readUncommitted: opts.readUncommitted ?? false,
    });
    this.consumer.on(this.consumer.events.END_BATCH_PROCESS, ({ payload }) => {
      const k = `${payload.topic}/${payload.partition}`;
      const o = BigInt(payload.lastOffset) + 1n;
      if (o > (this.next.get(k) ?? 0n)) this.next.set(k, o);
    });
  }

  /** Creates the topics (3 partitions each) so subscribing never races auto-creation. */
  async createTopics(topics: string[], partitions = 3, configEntries: Array<{ name: string; value: string }> = []): Promise<void> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      // A broker under load answers a fresh topic's metadata late ("This server does not host
      // this topic-partition"), past kafkajs's own retries: create (a topic already there is
      // fine), then wait until every partition of every topic has a leader that answers.
      await until(
        `topics ${topics.join(', ')} created with leaders`,
        async () => {
          await admin.createTopics({
            topics: topics.map((topic) => ({ topic, numPartitions: partitions, replicationFactor: this.replicationFactor, configEntries })),
            waitForLeaders: true,
          });
          for (const topic of topics) if ((await admin.fetchTopicOffsets(topic)).length === 0) return false;
          return true;
        },
        60_000,
        250,
        { tolerateErrors: true },
      );
    } finally {
      await admin.disconnect();
    }
  }

  async start(topics: string[]): Promise<void> {
    await this.consumer.connect();
    await this.consumer.subscribe({ topics, fromBeginning: true });
    await this.consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        const headers: Record<string, string> = {};
        for (const [k, v] of Object.entries(message.headers ?? {}))
          if (v !== undefined) headers[k] = Buffer.isBuffer(v) ? v.toString() : String(v);
        this.messages.push({
          topic,
          partition,
          offset: message.offset,
          key: message.key?.toString() ?? null,
          value: message.value?.toString() ?? '',
          valueBytes: message.value ?? Buffer.alloc(0),
          headers,
        });
      },
    });
  }

  async waitForIds(ids: Iterable<string>, timeoutMs = 60_000): Promise<void> {
    const want = new Set(ids);
    await until(
      `${want.size} ids on Kafka`,
      async () => {
        for (const m of this.messages) want.delete(m.headers.id ?? '');
        return want.size === 0;
      },
      timeoutMs,
      200,
    );
  }

  /**
   * Waits until everything the topics hold has been read: every partition's high watermark.
   * After the relay confirmed all it had, this is the positive sign that no duplicate is still
   * on its way.
   */
  async waitCaughtUp(topics: string[], timeoutMs = 30_000): Promise<void> {
    const admin = this.kafka.admin();
    await admin.connect();
    try {
      const ends = new Map<string, bigint>();
      // A busy broker can answer a metadata request with a passing "does not host this
      // topic-partition": ask again.
      await until(
        'the end of every partition',
        async () => {
          for (const topic of topics) {
            for (const p of await admin.fetchTopicOffsets(topic)) ends.set(`${topic}/${p.partition}`, BigInt(p.high));
          }
          return true;
        },
        timeoutMs,
        200,
        { tolerateErrors: true },
      );
      await until(
        'the reader at the end of every partition',
        async () => {
          const next = new Map(this.next);
          for (const m of this.messages) {
            const k = `${m.topic}/${m.partition}`;
            const o = BigInt(m.offset) + 1n;
            if (o > (next.get(k) ?? 0n)) next.set(k, o);
          }
          return [...ends].every(([k, end]) => end === 0n || (next.get(k) ?? 0n) >= end);
        },
        timeoutMs,
        100,
      );
    } finally {
      await admin.disconnect();
    }
  }

  async stop(): Promise<void> {
    await this.consumer.disconnect().catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

/** A delivered message as the order check sees it (Kafka record or AMQP delivery). */
export interface Ordered {
  id: string;
  key: string;
  seq: number;
  /** Orders messages of one key: `topic/partition` or the queue. */
  stream: string;
  /** The position in the stream: the offset, or the delivery index. */
  position: number;
}

/**
 * Per-key order after dropping duplicates by id, as a deduplicating consumer sees it: within
 * each stream, the first occurrence of every id of a key carries a strictly increasing sequence
 * number (the payload's `seq`).
 */
export function orderAndDuplicates(all: readonly Ordered[]): { violations: string[]; duplicates: number; unique: number } {
  const seen = new Set<string>();
  const last = new Map<string, number>();
  const violations: string[] = [];
  let duplicates = 0;
  const sorted = [...all].sort((a, b) => (a.stream === b.stream ? a.position - b.position : a.stream < b.stream ? -1 : 1));
  for (const d of sorted) {
    if (seen.has(d.id)) {
      duplicates++;
      continue;
    }
    seen.add(d.id);
    const k = `${d.stream}|${d.key}`;
    if (d.seq <= (last.get(k) ?? 0)) violations.push(`${k}: seq ${d.seq} after ${last.get(k)}`);
    last.set(k, d.seq);
  }
  return { violations, duplicates, unique: seen.size };
}

/** A Kafka record as the order check sees it. */
export function ordered(m: Consumed): Ordered {
  let seq = 0;
  try {
    seq = (JSON.parse(m.value) as { seq?: number }).seq ?? 0;
  } catch {
    // not one of the test's rows
  }
  return { id: m.headers.id ?? '', key: m.key ?? '', seq, stream: `${m.topic}/${m.partition}`, position: Number(m.offset) };
}

/**
 * Kafka publishing workers in the tests' configs: 1, so the suite runs the worker path even where
 * the default (usable cores − 2) is 0; OUTBOXD_TEST_KAFKA_WORKERS=0 runs it on the main thread.
 */
export const KAFKA_TEST_WORKERS = Number(process.env.OUTBOXD_TEST_KAFKA_WORKERS ?? 1);

/**
 * For the authentication tests: a new temp dir (`prefix` names it; removeDir it afterwards) with
 * a throwaway PKI whose client certificate is for `clientCn` and whose client key is encrypted
 * with `passphrase`, which also stands in `dir/passphrase` for a keyPassphraseFile setting.
 */
export function pkiWithEncryptedKey(prefix: string, clientCn: string, passphrase: string): { dir: string; pki: TestPki } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const pki = makePki(dir, { clientCn, clientKeyPassphrase: passphrase });
  writeFileSync(join(dir, 'passphrase'), `${passphrase}\n`);
  return { dir, pki };
}

/**
 * A relay config for `db` publishing to RabbitMQ, retrying fast: `rabbitmq` is the lines under
 * sink.rabbitmq (four spaces in, each ending in a newline), `extra` top-level sections after http.
 */
export function rabbitmqConfig(db: { url: string; slot: string }, rabbitmq: string, extra = ''): (port: number) => string {
  return (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
pipeline:
  retry: { initial: 100ms, max: 1s }
sink:
  type: rabbitmq
  rabbitmq:
${rabbitmq}http:
  host: 127.0.0.1
  port: ${port}
${extra}`;
}

export function kafkaConfig(opts: {
  pgUrl: string;
  slot: string;
  brokers: string[];
  extra?: string;
  workers?: number;
}): (port: number) => string {
  return (port) => `postgres:
  url: ${opts.pgUrl}
  slot: ${opts.slot}
  statusInterval: 1s
  heartbeat:
    interval: 2s
  lagPollInterval: 1s
  reconnect: { initial: 100ms, max: 2s }
outbox:
  tables:
    - name: public.outbox
sink:
  type: kafka
  kafka:
    brokers: [${opts.brokers.join(', ')}]
    workers: ${opts.workers ?? KAFKA_TEST_WORKERS}
http:
  host: 127.0.0.1
  port: ${port}
shutdown:
  grace: 20s
${opts.extra ?? ''}`;
}
