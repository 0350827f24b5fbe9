import amqp from 'amqplib';
import kafkajs from 'kafkajs';
import pg from 'pg';
import { DEFAULT_KAFKA_VERSION, startKafka } from '../../test/harness/kafka.js';
import { startPostgres } from '../../test/harness/postgres.js';
import { startRabbitMQ } from '../../test/harness/rabbitmq.js';
import { note } from './log.js';
import { connect, dropSlot } from './pg.js';
import { listenerPids } from './procfs.js';

/**
 * Postgres 15, Kafka and RabbitMQ, started through the test harness, or taken from the
 * environment: OUTBOXD_BENCH_PG_URL (a superuser URL; the bench creates its own database),
 * OUTBOXD_BENCH_KAFKA (host:port,…), OUTBOXD_BENCH_AMQP (amqp://user:pass@host:port/vhost).
 */
export interface Services {
  /** URL of the bench database (outboxd_bench), a superuser with REPLICATION. */
  dbUrl: string;
  pgVersion: string;
  kafka: string[] | null;
  amqpUrl: string | null;
  /** Processes serving the brokers on this host (for their CPU time); empty when remote. */
  kafkaPids: number[];
  /** The harness broker's log.dirs (bytes stored per topic); null for OUTBOXD_BENCH_KAFKA. */
  kafkaDataDir: string | null;
  rabbitPids: number[];
  origin: { postgres: 'harness' | 'env'; kafka: 'harness' | 'env' | 'none'; rabbitmq: 'harness' | 'env' | 'none' };
  versions: { kafka: string | null; rabbitmq: string | null };
  close(): Promise<void>;
}

export const BENCH_DB = 'outboxd_bench';

function portOf(hostPort: string): number {
  return Number(hostPort.split(':').pop());
}

export async function startServices(need: { kafka: boolean; rabbitmq: boolean }): Promise<Services> {
  const envPg = process.env.OUTBOXD_BENCH_PG_URL;
  const envKafka = process.env.OUTBOXD_BENCH_KAFKA;
  const envAmqp = process.env.OUTBOXD_BENCH_AMQP;
  const closers: Array<() => Promise<void>> = [];
  const t0 = performance.now();
  const wantKafka = need.kafka && !envKafka;
  const [pgS, kafkaS, rabbitS] = await Promise.allSettled([
    envPg ? Promise.resolve(null) : startPostgres(15),
    // The broker with the JVM settings of Kafka's own start script, as users run it.
    wantKafka ? startKafka({ jvm: 'kafka-defaults' }) : Promise.resolve(null),
    need.rabbitmq && !envAmqp ? startRabbitMQ() : Promise.resolve(null),
  ]);
  for (const s of [pgS, kafkaS, rabbitS]) {
    if (s.status === 'fulfilled' && s.value) {
      const server = s.value;
      closers.push(() => server.destroy());
    }
  }
  const close = async (): Promise<void> => {
    await Promise.allSettled(closers.map((c) => c()));
  };
  const failed = [pgS, kafkaS, rabbitS].filter((s) => s.status === 'rejected');
  if (failed.length > 0) {
    await close();
    throw new Error(`services failed to start:\n${failed.map((f) => String((f as PromiseRejectedResult).reason)).join('\n')}`);
  }
  const pgServer = pgS.status === 'fulfilled' ? pgS.value : null;
  const kafkaServer = kafkaS.status === 'fulfilled' ? kafkaS.value : null;
  const rabbitServer = rabbitS.status === 'fulfilled' ? rabbitS.value : null;
  note(`services up in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const serverUrl = envPg ?? (pgServer?.url as string);
  const admin = await connect(serverUrl);
  let pgVersion = '';
  try {
    pgVersion = (await admin.query<{ v: string }>(`SELECT current_setting('server_version') AS v`)).rows[0]?.v ?? '';
    if (pgServer) {
      // A throwaway server: keep checkpoints out of the way of a 1M-row backlog.
      await admin.query(`ALTER SYSTEM SET max_wal_size = '16GB'`);
      await admin.query(`ALTER SYSTEM SET checkpoint_timeout = '1h'`);
      await admin.query('SELECT pg_reload_conf()');
    }
    // A fresh database; slots of an interrupted earlier run would keep it from being dropped.
    const { rows } = await admin.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots WHERE database = $1', [BENCH_DB]);
    for (const r of rows) await dropSlot(admin, r.slot_name);
    await admin.query(`DROP DATABASE IF EXISTS ${BENCH_DB} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${BENCH_DB}`);
  } finally {
    await admin.end();
  }
  const u = new URL(serverUrl);
  u.pathname = `/${BENCH_DB}`;

  const kafka = envKafka ? envKafka.split(',').map((s) => s.trim()) : (kafkaServer?.brokers ?? null);
  const amqpUrl = envAmqp ?? rabbitServer?.url ?? null;
  const services: Services = {
    dbUrl: u.toString(),
    pgVersion,
    kafka: need.kafka ? kafka : null,
    amqpUrl: need.rabbitmq ? amqpUrl : null,
    kafkaPids: kafka?.[0] ? listenerPids(portOf(kafka[0])) : [],
    kafkaDataDir: envKafka ? null : (kafkaServer?.dataDir ?? null),
    rabbitPids: amqpUrl ? listenerPids(Number(new URL(amqpUrl).port || 5672)) : [],
    origin: {
      postgres: envPg ? 'env' : 'harness',
      kafka: !need.kafka ? 'none' : envKafka ? 'env' : 'harness',
      rabbitmq: !need.rabbitmq ? 'none' : envAmqp ? 'env' : 'harness',
    },
    versions: { kafka: null, rabbitmq: null },
    close,
  };
  if (services.kafka) {
    const reachable = await kafkaVersion(services.kafka);
    services.versions.kafka = kafkaServer ? (process.env.KAFKA_VERSION ?? DEFAULT_KAFKA_VERSION) : reachable;
  }
  if (services.amqpUrl) services.versions.rabbitmq = await rabbitVersion(services.amqpUrl);
  return services;
}

async function kafkaVersion(brokers: string[]): Promise<string | null> {
  const admin = new kafkajs.Kafka({ clientId: 'outboxd-bench', brokers, logLevel: kafkajs.logLevel.NOTHING }).admin();
  try {
    await admin.connect();
    const c = await admin.describeCluster();
    return `${c.brokers.length} broker(s), version not reported`;
  } catch {
    return null;
  } finally {
    await admin.disconnect().catch(() => undefined);
  }
}

async function rabbitVersion(url: string): Promise<string | null> {
  try {
    const conn = await amqp.connect(url);
    const props = (conn.connection as unknown as { serverProperties?: Record<string, unknown> }).serverProperties;
    await conn.close();
    return typeof props?.version === 'string' ? props.version : null;
  } catch {
    return null;
  }
}

export { pg };
