import pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import type { PgHost, TargetSessionAttrs } from '../config/pg-url.js';
import { OutboxdError, PgConnectionError } from '../errors.js';
import { classifyPgError } from '../postgres/pg-errors.js';
import { withOwnSocket } from './replication-socket.js';

/**
 * Connections to Postgres: their options, the choice of host when postgres.url lists several,
 * and the admin connection for plain SQL.
 */

/** Connection options for one host of postgres.url (the first by default). */
export function clientConfig(cfg: PostgresConfig, host: PgHost = cfg.hosts[0] as PgHost): pg.ClientConfig {
  let url = host.url;
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

const hosts = new WeakMap<pg.Client, PgHost>();

/** The host of postgres.url a connection opened here went to, as `host:port`. */
export function hostOf(client: pg.Client): string {
  return hosts.get(client)?.label ?? 'Postgres';
}

/**
 * Opens a connection to the first host of postgres.url that answers and fits
 * `target_session_attrs`, trying them in the order written, each within the connect timeout,
 * as libpq does: `read-write` wants `transaction_read_only` off, `read-only` on, `primary` a
 * server not in recovery, `standby` one in recovery, and `prefer-standby` a standby if any
 * answers, else any server. Both the admin and the replication connection open here, so after a
 * promotion both find the new primary. With one host and `any`, this is a plain connect.
 * Rejects with a PgConnectionError (retriable: a failover may be under way) naming every host
 * and why it was not taken, unless every host refused for a reason retrying cannot fix.
 */
export async function connectClient(cfg: PostgresConfig, options: Options = {}): Promise<pg.Client> {
  const want = cfg.targetSessionAttrs;
  if (want === 'any' && cfg.hosts.length === 1) return connectHost(cfg, cfg.hosts[0] as PgHost, options);
  const passes: TargetSessionAttrs[] = want === 'prefer-standby' ? ['standby', 'any'] : [want];
  const refusals: Array<{ host: PgHost; error: OutboxdError | null; why: string }> = [];
  for (const pass of passes) {
    for (const host of cfg.hosts) {
      let client: pg.Client;
      try {
        client = await open(cfg, host, options);
      } catch (err) {
        const error = classifyPgError(err, 'connecting');
        refusals.push({ host, error, why: (err as Error)?.message ?? String(err) });
        continue;
      }
      try {
        const why = await unfit(client, pass);
        if (why === null) return client;
        refusals.push({ host, error: null, why });
      } catch (err) {
        refusals.push({ host, error: classifyPgError(err, 'checking the session'), why: (err as Error)?.message ?? String(err) });
      }
      await client.end().catch(() => undefined);
    }
  }
  const detail = refusals.map((r) => `${r.host.label}: ${r.why}`).join('; ');
  const message = `connecting to Postgres: no host of postgres.url fits target_session_attrs=${want} (${detail})`;
  const first = refusals[0]?.error;
  // A host that answered but did not fit, or one that may answer later: a failover may be under way.
  if (refusals.some((r) => r.error === null || r.error.retriable)) throw new PgConnectionError(message, first);
  throw new OutboxdError(first?.code ?? 'PG_CONNECTION', message, { cause: first });
}

/**
 * The replication connection (`replication: 'database'`), to a host chosen as connectClient
 * chooses, on a socket of outboxd's own that never holds a value over `maxValueBytes`
 * (replication-socket.ts, docs/adr/0015).
 */
export function connectReplication(cfg: PostgresConfig, maxValueBytes: number): Promise<pg.Client> {
  return connectClient(cfg, { replication: 'database', maxValueBytes } as Options);
}

/** pg's options, and `maxValueBytes` for a replication connection on outboxd's own socket. */
type Options = Partial<pg.ClientConfig> & { maxValueBytes?: number };

/** Opens a second connection to the host `client` went to, whatever that host's role is now. */
export function connectSameHost(cfg: PostgresConfig, client: pg.Client, options: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  return connectHost(cfg, hosts.get(client) ?? (cfg.hosts[0] as PgHost), options);
}

/** Opens a connection to `host` whatever its role (validate looks at every host of the URL). */
export async function connectHost(cfg: PostgresConfig, host: PgHost, options: Options = {}): Promise<pg.Client> {
  try {
    return await open(cfg, host, options);
  } catch (err) {
    throw classifyPgError(err, cfg.hosts.length > 1 ? `connecting to ${host.label}` : 'connecting to Postgres');
  }
}

async function open(cfg: PostgresConfig, host: PgHost, { maxValueBytes, ...options }: Options): Promise<pg.Client> {
  const config = { ...clientConfig(cfg, host), ...options } as pg.ClientConfig;
  const client = new pg.Client(maxValueBytes === undefined ? config : withOwnSocket(config, maxValueBytes));
  // An idle connection that breaks must not crash the process; its owner notices on next use
  // (the replication stream adds listeners of its own).
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw err;
  }
  hosts.set(client, host);
  return client;
}

/** Why a connected server does not fit `want`, or null when it does. One plain query: it works on replication connections too. */
async function unfit(client: pg.Client, want: TargetSessionAttrs): Promise<string | null> {
  if (want === 'any') return null;
  const { rows } = await client.query<{ read_only: string; in_recovery: boolean }>(
    `SELECT current_setting('transaction_read_only') AS read_only, pg_is_in_recovery() AS in_recovery`,
  );
  const readOnly = rows[0]?.read_only === 'on';
  const inRecovery = rows[0]?.in_recovery === true;
  switch (want) {
    case 'read-write':
      return readOnly ? `read-only (transaction_read_only is on${inRecovery ? ', a standby' : ''})` : null;
    case 'read-only':
      return readOnly ? null : 'read-write (transaction_read_only is off)';
    case 'primary':
      return inRecovery ? 'a standby (in recovery)' : null;
    case 'standby':
    case 'prefer-standby':
      return inRecovery ? null : 'a primary (not in recovery)';
  }
}

/**
 * The admin connection: plain SQL, every statement bounded by `postgres.statementTimeout` and
 * every lock wait by `postgres.lockTimeout`, so no query can hang the relay silently.
 */
export function connectAdmin(cfg: PostgresConfig): Promise<pg.Client> {
  return connectClient(cfg, { statement_timeout: cfg.statementTimeoutMs, lock_timeout: cfg.lockTimeoutMs });
}
