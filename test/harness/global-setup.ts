/**
 * vitest globalSetup: starts PostgreSQL 15, PostgreSQL 17, Kafka and RabbitMQ in parallel,
 * provides their addresses to the tests (`inject('pg15Url')` etc.), destroys them on teardown.
 * Every test runs against every service: there is no reduced set and no skipped test. If a
 * service cannot start, the run fails and says why.
 */
// Brings 'vitest' into the program so the ProvidedContext augmentation below resolves (TS2664 otherwise).
import type {} from 'vitest';
import type { TestProject } from 'vitest/node';
import { type KafkaServer, startKafka } from './kafka.js';
import { type PgServer, startPostgres } from './postgres.js';
import { type RabbitServer, startRabbitMQ } from './rabbitmq.js';

declare module 'vitest' {
  export interface ProvidedContext {
    pg15Url: string;
    pg17Url: string;
    /** comma-separated host:port list, e.g. '127.0.0.1:40123' */
    kafkaBrokers: string;
    /**
     * amqp://outboxd:secret@127.0.0.1:PORT/%2F; the same user has all permissions on vhost
     * outboxd_test too (replace '/%2F' by '/outboxd_test'). Plugin rabbitmq_consistent_hash_exchange.
     */
    rabbitmqUrl: string;
  }
}

async function timed<T>(name: string, start: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  const result = await start();
  process.stdout.write(`[harness] ${name} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
  return result;
}

const fulfilled = <T>(r: PromiseSettledResult<T>): T | undefined => (r.status === 'fulfilled' ? r.value : undefined);

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // Wait for all before deciding, so that one failure never leaves the others running.
  const [pg15, pg17, kafka, rabbitmq] = await Promise.allSettled([
    timed('pg15', () => startPostgres(15)),
    timed('pg17', () => startPostgres(17)),
    timed('kafka', () => startKafka()),
    timed('rabbitmq', () => startRabbitMQ()),
  ]);
  const started: Array<PgServer | KafkaServer | RabbitServer> = [
    fulfilled(pg15),
    fulfilled(pg17),
    fulfilled(kafka),
    fulfilled(rabbitmq),
  ].filter((s): s is PgServer | KafkaServer | RabbitServer => s !== undefined);
  const teardown = async (): Promise<void> => {
    await Promise.allSettled(started.map((s) => s.destroy()));
  };
  const failures = [pg15, pg17, kafka, rabbitmq].flatMap((r) =>
    r.status === 'rejected' ? [r.reason instanceof Error ? r.reason.message : String(r.reason)] : [],
  );
  if (failures.length > 0) {
    await teardown();
    throw new Error(`test services failed to start:\n${failures.join('\n\n')}`);
  }
  project.provide('pg15Url', fulfilled(pg15)?.url ?? '');
  project.provide('pg17Url', fulfilled(pg17)?.url ?? '');
  project.provide('kafkaBrokers', fulfilled(kafka)?.brokers.join(',') ?? '');
  project.provide('rabbitmqUrl', fulfilled(rabbitmq)?.url ?? '');
  return teardown;
}
