/**
 * vitest globalSetup: a small service manager on loopback. A test file asks for the services it
 * uses (`await pgUrl(15)`, `await kafkaBrokers()`, `await rabbitmqUrl()` from ./services.ts);
 * the first request starts one, later ones share it, and teardown destroys every service that
 * was started. A file that needs none (docs, Helm, CLI) starts none and waits for none.
 * If a service cannot start, every test that asks for it fails and says why.
 */
// Brings 'vitest' into the program so the ProvidedContext augmentation below resolves (TS2664 otherwise).
import type {} from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { TestProject } from 'vitest/node';
import { type KafkaServer, startKafka } from './kafka.js';
import { PG_MAJORS, type PgMajor, type PgServer, startPostgres } from './postgres.js';
import { type RabbitServer, startRabbitMQ } from './rabbitmq.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /** http://127.0.0.1:PORT of the service manager (see ./services.ts). */
    servicesUrl: string;
  }
}

export type ServiceName = `pg${PgMajor}` | 'kafka' | 'rabbitmq';

type Server = PgServer | KafkaServer | RabbitServer;

/** What a service tells the tests: a Postgres superuser URL, Kafka's brokers, RabbitMQ's URL. */
function address(s: Server): string {
  return 'brokers' in s ? s.brokers.join(',') : s.url;
}

function starter(name: string): (() => Promise<Server>) | undefined {
  if (name === 'kafka') return startKafka;
  if (name === 'rabbitmq') return startRabbitMQ;
  const major = Number(name.replace(/^pg/, ''));
  return (PG_MAJORS as readonly number[]).includes(major) && name.startsWith('pg') ? () => startPostgres(major as PgMajor) : undefined;
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = new Map<string, Promise<Server>>();
  const server = createServer((req, res) => {
    const name = (req.url ?? '').replace(/^\/service\//, '');
    const start = starter(name);
    if (!start) {
      res.writeHead(404).end(`no such service: ${name}`);
      return;
    }
    let s = started.get(name);
    if (!s) {
      const t0 = performance.now();
      s = start();
      s.then(
        () => process.stdout.write(`[harness] ${name} ready in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`),
        () => undefined,
      );
      started.set(name, s);
    }
    s.then(
      (srv) => res.writeHead(200, { 'content-type': 'text/plain' }).end(address(srv)),
      (err: unknown) => res.writeHead(500).end(`${name} failed to start: ${err instanceof Error ? err.message : String(err)}`),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  project.provide('servicesUrl', `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
  return async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    const all = await Promise.allSettled(started.values());
    await Promise.allSettled(all.flatMap((r) => (r.status === 'fulfilled' ? [r.value.destroy()] : [])));
  };
}
