/**
 * Smoke test of the test harness itself: the services from global-setup are usable the way
 * outboxd uses them (logical replication; kafkajs idempotent producer + consumer group;
 * amqplib confirm channels with mandatory persistent publishes), and stop/start/destroy work
 * on private instances.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import amqp, { type ChannelModel, type ConfirmChannel } from 'amqplib';
import { type Consumer, Kafka, type KafkaMessage, logLevel } from 'kafkajs';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { startKafka } from './kafka.js';
import { isListening } from './ports.js';
import { startPostgres } from './postgres.js';
import { RABBIT_VHOST, startRabbitMQ } from './rabbitmq.js';
import * as services from './services.js';

const LONG = 120_000;

async function withClient<T>(url: string, fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const pgVersions = [
  { version: 15 as const, url: () => services.pgUrl(15) },
  { version: 17 as const, url: () => services.pgUrl(17) },
];

describe.each(pgVersions)('postgres $version', ({ version, url: serviceUrl }) => {
  let url = '';
  beforeAll(async () => {
    url = await serviceUrl();
  });

  it('is a replication-capable superuser on a logical-WAL server', async () => {
    expect(url).toMatch(/^postgres:\/\/outboxd_test:secret@127\.0\.0\.1:\d+\/postgres$/);
    await withClient(url, async (c) => {
      const { rows } = await c.query<{ v: string; wal: string; slots: string; senders: string; su: boolean; repl: boolean }>(
        `SELECT current_setting('server_version_num') AS v, current_setting('wal_level') AS wal,
                current_setting('max_replication_slots') AS slots, current_setting('max_wal_senders') AS senders,
                rolsuper AS su, rolreplication AS repl
           FROM pg_roles WHERE rolname = current_user`,
      );
      expect(rows[0]).toMatchObject({ wal: 'logical', slots: '20', senders: '20', su: true, repl: true });
      expect(Math.floor(Number(rows[0]?.v) / 10000)).toBe(version);
    });
  });

  it('decodes committed rows through a pgoutput slot', async () => {
    await withClient(url, async (c) => {
      const slot = `harness_smoke_${version}`;
      await c.query('CREATE TABLE IF NOT EXISTS harness_smoke (id serial PRIMARY KEY, payload text)');
      await c.query('DROP PUBLICATION IF EXISTS harness_smoke_pub');
      await c.query('CREATE PUBLICATION harness_smoke_pub FOR TABLE harness_smoke');
      await c.query(`SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
      try {
        await c.query(`INSERT INTO harness_smoke (payload) VALUES ('a'), ('b')`);
        const { rows } = await c.query<{ n: string }>(
          `SELECT count(*) AS n FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
             'proto_version', '1', 'publication_names', 'harness_smoke_pub')`,
          [slot],
        );
        // BEGIN, RELATION, INSERT, INSERT, COMMIT
        expect(Number(rows[0]?.n)).toBeGreaterThanOrEqual(5);
      } finally {
        await c.query('SELECT pg_drop_replication_slot($1)', [slot]);
      }
    });
  });

  it('accepts replication-protocol connections over TCP with a password', async () => {
    // pg passes `replication` through to the startup packet; @types/pg does not declare it.
    const config: pg.ClientConfig & { replication: string } = { connectionString: url, replication: 'database' };
    const client = new pg.Client(config);
    await client.connect();
    try {
      const { rows } = await client.query<{ systemid: string; xlogpos: string }>('IDENTIFY_SYSTEM');
      expect(rows[0]?.systemid).toMatch(/^\d+$/);
    } finally {
      await client.end();
    }
  });

  it(
    'private instance survives immediate and fast restarts, destroy removes it',
    async () => {
      const server = await startPostgres(version);
      try {
        expect(server.version).toBe(version);
        await withClient(server.url, async (c) => {
          await c.query('CREATE TABLE t (v int)');
          await c.query('INSERT INTO t VALUES (1)');
          await c.query(`SELECT pg_create_logical_replication_slot('keep', 'pgoutput')`);
        });
        await server.stop('immediate');
        expect(await isListening(server.host, server.port)).toBe(false);
        await server.start();
        await withClient(server.url, async (c) => {
          await c.query('INSERT INTO t VALUES (2)');
        });
        await server.stop();
        await server.stop(); // idempotent
        await server.start();
        await withClient(server.url, async (c) => {
          expect((await c.query('SELECT v FROM t ORDER BY v')).rows).toEqual([{ v: 1 }, { v: 2 }]);
          expect((await c.query(`SELECT slot_name FROM pg_replication_slots`)).rows).toEqual([{ slot_name: 'keep' }]);
        });
      } finally {
        await server.destroy();
      }
      expect(existsSync(server.dataDir)).toBe(false);
      expect(await isListening(server.host, server.port)).toBe(false);
    },
    LONG,
  );
});

/** Consumes until `count` messages arrived (or throws after timeoutMs). */
async function consume(
  consumer: Consumer,
  topics: string[],
  count: number,
  timeoutMs = 30_000,
): Promise<Array<{ topic: string; partition: number; message: KafkaMessage }>> {
  const got: Array<{ topic: string; partition: number; message: KafkaMessage }> = [];
  await consumer.subscribe({ topics, fromBeginning: true });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`consumed ${got.length}/${count} messages in ${timeoutMs} ms`)), timeoutMs);
    void consumer.run({
      eachMessage: async ({ topic, partition, message }) => {
        got.push({ topic, partition, message });
        if (got.length >= count) {
          clearTimeout(timer);
          resolve();
        }
      },
    });
  });
  return got;
}

describe('kafka', () => {
  let kafkaBrokers = '';
  beforeAll(async () => {
    kafkaBrokers = (await services.kafkaBrokers()).join(',');
  });

  it(
    'kafkajs idempotent producer (acks -1, sendBatch) and a consumer group round-trip',
    async () => {
      const kafka = new Kafka({ clientId: 'harness-smoke', brokers: kafkaBrokers.split(','), logLevel: logLevel.WARN });
      const admin = kafka.admin();
      const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
      const consumer = kafka.consumer({ groupId: `harness-smoke-${Date.now()}` });
      const created = `harness-created-${Date.now()}`;
      const auto = `harness-auto-${Date.now()}`; // auto.create.topics.enable
      try {
        await admin.connect();
        expect(await admin.createTopics({ topics: [{ topic: created, numPartitions: 3 }], waitForLeaders: true })).toBe(true);
        await producer.connect();
        const messages = (topic: string) =>
          Array.from({ length: 30 }, (_, i) => ({ key: `k${i % 5}`, value: `${topic}:${i}`, headers: { seq: String(i) } }));
        const acks = await producer.sendBatch({
          acks: -1,
          topicMessages: [
            { topic: created, messages: messages(created) },
            { topic: auto, messages: messages(auto) },
          ],
        });
        expect(acks.every((a) => a.errorCode === 0)).toBe(true);
        const autoMeta = await admin.fetchTopicMetadata({ topics: [auto] });
        expect(autoMeta.topics[0]?.partitions).toHaveLength(3); // num.partitions=3

        await consumer.connect();
        const got = await consume(consumer, [created, auto], 60);
        expect(got).toHaveLength(60);
        // Per key (hence per partition), order is the send order.
        for (const topic of [created, auto]) {
          const byKey = new Map<string, number[]>();
          for (const { message } of got.filter((g) => g.topic === topic)) {
            const key = message.key?.toString() ?? '';
            byKey.set(key, [...(byKey.get(key) ?? []), Number(message.headers?.seq?.toString())]);
          }
          expect(byKey.size).toBe(5);
          for (const seqs of byKey.values()) expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
        }
      } finally {
        await consumer.disconnect();
        await producer.disconnect();
        await admin.disconnect();
      }
    },
    LONG,
  );

  it(
    'private instance keeps messages across stop/start (graceful and kill), destroy stops it',
    async () => {
      const server = await startKafka();
      const kafka = new Kafka({ clientId: 'harness-restart', brokers: server.brokers, logLevel: logLevel.WARN });
      try {
        const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
        await producer.connect();
        await producer.send({ topic: 'restart', acks: -1, messages: [{ key: 'a', value: 'before-stop' }] });
        await producer.disconnect();
        await server.stop();
        await server.start();
        const producer2 = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
        await producer2.connect();
        await producer2.send({ topic: 'restart', acks: -1, messages: [{ key: 'a', value: 'before-kill' }] });
        await producer2.disconnect();
        await server.stop('kill');
        await server.start();
        const consumer = kafka.consumer({ groupId: 'restart' });
        await consumer.connect();
        try {
          const got = await consume(consumer, ['restart'], 2);
          expect(got.map((g) => g.message.value?.toString())).toEqual(['before-stop', 'before-kill']);
        } finally {
          await consumer.disconnect();
        }
      } finally {
        await server.destroy();
      }
      const [host, port] = (server.brokers[0] ?? '').split(':');
      expect(await isListening(host ?? '', Number(port))).toBe(false);
    },
    LONG,
  );
});

/** Publishes mandatory + persistent on a confirm channel; resolves on the broker's ack. */
function publishConfirmed(ch: ConfirmChannel, exchange: string, routingKey: string, body: string): Promise<void> {
  return new Promise((resolve, reject) => {
    ch.publish(exchange, routingKey, Buffer.from(body), { mandatory: true, persistent: true, contentType: 'text/plain' }, (err) =>
      err ? reject(err) : resolve(),
    );
  });
}

type AmqpError = Error & { code?: number | string };

/**
 * Connects and opens a confirm channel. Errors (a lost socket, a channel closed by the server
 * after a failed declare) arrive as 'error' events on the connection / channel, which would
 * crash the runner without a listener; they are collected in `errors` instead. `closed`
 * resolves with the error the connection closed with, if any (a broker shutdown's 320
 * CONNECTION_FORCED shows up only there: amqplib does not emit 'error' for it).
 */
async function openConfirm(
  url: string,
): Promise<{ conn: ChannelModel; ch: ConfirmChannel; errors: AmqpError[]; closed: Promise<AmqpError | undefined> }> {
  const conn = await amqp.connect(url);
  const errors: AmqpError[] = [];
  conn.on('error', (err: AmqpError) => errors.push(err));
  const closed = new Promise<AmqpError | undefined>((resolve) => conn.once('close', (err?: AmqpError) => resolve(err)));
  const ch = await conn.createConfirmChannel();
  ch.on('error', (err: Error) => errors.push(err));
  return { conn, ch, errors, closed };
}

/** "pid comm" of the live processes whose environment mentions `dir` (Linux; [] elsewhere). */
function processesUsing(dir: string): string[] {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((e) => /^\d+$/.test(e) && Number(e) !== process.pid);
  } catch {
    return [];
  }
  return pids.flatMap((pid) => {
    try {
      const environ = readFileSync(`/proc/${pid}/environ`, 'utf8');
      return environ.includes(`=${dir}`) ? [`${pid} ${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}`] : [];
    } catch {
      return []; // gone, or not ours
    }
  });
}

describe('rabbitmq', () => {
  let rabbitmqUrl = '';
  beforeAll(async () => {
    rabbitmqUrl = await services.rabbitmqUrl();
  });

  it(
    'confirm channel: consistent-hash and topic exchanges, mandatory + persistent publishes, vhost outboxd_test',
    async () => {
      expect(rabbitmqUrl).toMatch(/^amqp:\/\/outboxd:secret@127\.0\.0\.1:\d+\/%2F$/);
      const { conn, ch, errors } = await openConfirm(rabbitmqUrl);
      const id = `${Date.now()}`;
      const hash = `harness.hash.${id}`;
      const topic = `harness.topic.${id}`;
      const hashQueues = [`harness.hash.a.${id}`, `harness.hash.b.${id}`];
      const topicQueue = `harness.topic.q.${id}`;
      try {
        const returned: string[] = [];
        ch.on('return', (msg: amqp.Message) => returned.push(msg.fields.routingKey));
        // x-consistent-hash only exists with the plugin enabled.
        await ch.assertExchange(hash, 'x-consistent-hash', { durable: true });
        await ch.assertExchange(topic, 'topic', { durable: true });
        for (const q of [...hashQueues, topicQueue]) await ch.assertQueue(q, { durable: true });
        // For x-consistent-hash the binding key is the queue's weight on the hash ring.
        for (const q of hashQueues) await ch.bindQueue(q, hash, '1');
        await ch.bindQueue(topicQueue, topic, 'orders.#');

        const keys = Array.from({ length: 40 }, (_, i) => `order-${i}`);
        await Promise.all(keys.map((k) => publishConfirmed(ch, hash, k, `hash:${k}`)));
        await publishConfirmed(ch, topic, 'orders.created', 'topic:1');
        // Unroutable + mandatory: basic.return, then still a confirm (ack, not nack).
        await publishConfirmed(ch, topic, 'nobody.listens', 'topic:lost');
        await ch.waitForConfirms();
        expect(returned).toEqual(['nobody.listens']);

        const counts = await Promise.all(hashQueues.map(async (q) => (await ch.checkQueue(q)).messageCount));
        expect(counts[0]! + counts[1]!).toBe(40);
        expect(counts.every((c) => c > 0)).toBe(true); // spread over both queues
        // A routing key always hashes to the same queue.
        const first = await ch.get(hashQueues[0]!, { noAck: true });
        expect(first).not.toBe(false);
        if (first) {
          await publishConfirmed(ch, hash, first.fields.routingKey, 'again');
          expect((await ch.checkQueue(hashQueues[0]!)).messageCount).toBe(counts[0]);
        }
        const got = await ch.get(topicQueue, { noAck: true });
        expect(got && { body: got.content.toString(), mode: got.properties.deliveryMode, key: got.fields.routingKey }).toEqual({
          body: 'topic:1',
          mode: 2,
          key: 'orders.created',
        });

        // The same user on vhost outboxd_test, whose queues are separate from /'s.
        const vhostUrl = rabbitmqUrl.replace(/\/%2F$/, `/${RABBIT_VHOST}`);
        const other = await openConfirm(vhostUrl);
        try {
          await other.ch.assertQueue(topicQueue, { exclusive: true }); // gone with the connection
          expect((await other.ch.checkQueue(topicQueue)).messageCount).toBe(0);
        } finally {
          await other.conn.close();
        }
        expect(other.errors).toEqual([]);
      } finally {
        // Best effort: after a failure the channel may be closed already.
        for (const q of [...hashQueues, topicQueue]) await ch.deleteQueue(q).catch(() => undefined);
        for (const x of [hash, topic]) await ch.deleteExchange(x).catch(() => undefined);
        await conn.close().catch(() => undefined);
      }
      expect(errors).toEqual([]);
    },
    LONG,
  );

  it(
    'private instance keeps durable exchanges, queues and persistent messages across stop/start (graceful and kill), destroy leaves no process',
    async () => {
      const server = await startRabbitMQ();
      const queue = 'harness.restart';
      const exchange = 'harness.restart.hash';
      try {
        expect(server.vhostUrl).toBe(server.url.replace(/\/%2F$/, `/${RABBIT_VHOST}`));
        const a = await openConfirm(server.vhostUrl);
        await a.ch.assertExchange(exchange, 'x-consistent-hash', { durable: true });
        await a.ch.assertQueue(queue, { durable: true });
        await a.ch.bindQueue(queue, exchange, '1');
        await publishConfirmed(a.ch, exchange, 'k', 'before-stop');

        await server.stop();
        // A graceful stop closes client connections first: connection.close 320 CONNECTION_FORCED.
        expect((await a.closed)?.code).toBe(320);
        expect(a.errors).toEqual([]);
        expect(await isListening('127.0.0.1', server.port)).toBe(false);
        await server.stop(); // idempotent
        await server.start();

        const b = await openConfirm(server.vhostUrl);
        await publishConfirmed(b.ch, exchange, 'k', 'before-kill'); // the durable exchange + binding survived
        await server.stop('kill');
        // The socket just drops: 'error' (ECONNRESET, or 'Unexpected close'), then 'close' with it.
        const lost = await b.closed;
        expect(lost).toBeInstanceOf(Error);
        expect(b.errors).toContain(lost);
        await server.start();

        expect(await server.ctl('-q', '-p', RABBIT_VHOST, 'list_queues', 'name', 'messages', 'durable')).toMatch(
          /^harness\.restart\s+2\s+true$/m,
        );
        const c = await openConfirm(server.vhostUrl);
        try {
          const bodies: string[] = [];
          for (let m = await c.ch.get(queue, { noAck: true }); m; m = await c.ch.get(queue, { noAck: true })) {
            expect(m.properties.deliveryMode).toBe(2);
            bodies.push(m.content.toString());
          }
          expect(bodies).toEqual(['before-stop', 'before-kill']);
        } finally {
          await c.conn.close();
        }
      } finally {
        await server.destroy();
      }
      expect(existsSync(server.dataDir)).toBe(false);
      expect(await isListening('127.0.0.1', server.port)).toBe(false);
      // beam.smp, epmd, erl_child_setup, inet_gethost, ...: all gone.
      expect(processesUsing(server.dataDir)).toEqual([]);
    },
    LONG,
  );
});
