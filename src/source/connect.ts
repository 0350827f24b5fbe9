import pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import { classifyPgError } from './pg-errors.js';

/** Connections to Postgres: their options, and the admin connection for plain SQL. */

/** Connection options for both the admin and the replication connection. */
export function clientConfig(cfg: PostgresConfig): pg.ClientConfig {
  let url = cfg.url;
  if (cfg.password !== undefined) {
    const u = new URL(url);
    u.password = encodeURIComponent(cfg.password);
    url = u.toString();
  }
  return {
    connectionString: url,
    application_name: 'outboxd',
    connectionTimeoutMillis: cfg.connectTimeoutMs,
    keepAlive: true,
    // A peer that vanished without a FIN (a failover, a black-holed network) is noticed in
    // about a minute instead of the kernel's two hours.
    keepAliveInitialDelayMillis: 10_000,
  };
}

/**
 * The admin connection: plain SQL, every statement bounded by `postgres.statementTimeout` and
 * every lock wait by `postgres.lockTimeout`, so no query can hang the relay silently.
 */
export async function connectAdmin(cfg: PostgresConfig): Promise<pg.Client> {
  const client = new pg.Client({ ...clientConfig(cfg), statement_timeout: cfg.statementTimeoutMs, lock_timeout: cfg.lockTimeoutMs });
  // An idle admin connection that breaks must not crash the process; the next query reconnects.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw classifyPgError(err, 'connecting to Postgres');
  }
  return client;
}

const versions = new WeakMap<pg.Client, number>();
export async function serverVersion(client: pg.Client): Promise<number> {
  const known = versions.get(client);
  if (known !== undefined) return known;
  const { rows } = await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`);
  const v = Number(rows[0]?.v ?? 0);
  versions.set(client, v);
  return v;
}
