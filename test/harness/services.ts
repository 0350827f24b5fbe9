/**
 * The services a test file uses, started on first request by the global setup's service
 * manager and shared by every file after it (global-setup.ts).
 */
import { inject } from 'vitest';
import type { PgMajor } from './postgres.js';

async function ask(name: string): Promise<string> {
  const res = await fetch(`${inject('servicesUrl')}/service/${name}`);
  const body = await res.text();
  if (!res.ok) throw new Error(body);
  return body;
}

/** postgres://outboxd_test:secret@127.0.0.1:PORT/postgres: a superuser with REPLICATION. */
export function pgUrl(major: PgMajor): Promise<string> {
  return ask(`pg${major}`);
}

/** The broker list of a Kafka 4.x KRaft broker, e.g. ['127.0.0.1:40123']. */
export async function kafkaBrokers(): Promise<string[]> {
  return (await ask('kafka')).split(',');
}

/**
 * amqp://outboxd:secret@127.0.0.1:PORT/%2F; the same user has all permissions on vhost
 * outboxd_test too (replace '/%2F' by '/outboxd_test'). Plugin rabbitmq_consistent_hash_exchange.
 */
export function rabbitmqUrl(): Promise<string> {
  return ask('rabbitmq');
}
