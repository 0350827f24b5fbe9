/**
 * A throwaway single RabbitMQ node for tests, on free loopback ports in a temp dir. Runs
 * Debian's rabbitmq-server package (/usr/lib/rabbitmq; OUTBOXD_RABBITMQ_HOME overrides) as a
 * private node: its own node name, epmd (ERL_EPMD_PORT), AMQP and distribution ports, cookie,
 * config, data and log dirs. The system service (/var/lib/rabbitmq, /etc/rabbitmq) is never
 * used or touched.
 *
 * Boot time is mostly Erlang loading every module of every loaded application (RabbitMQ scans
 * them for boot steps, feature flags and upgrades), so the node runs from a private
 * RABBITMQ_HOME whose plugins dir links only rabbit, its dependencies and the enabled plugins
 * (about 40% of the package's modules): ~2.5 s instead of ~4.5 s per start.
 *
 * Processes: the rabbitmq-server script leads one process group (with beam.smp); epmd runs in
 * the foreground in a second group, so both are covered by the ServiceDir watchdog. beam's port
 * programs (erl_child_setup, inet_gethost, the disk monitor's sh) setsid() into sessions of
 * their own, outside those groups; they exit on EOF once beam is gone, and stop()/destroy()
 * make sure of it.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, readdirSync, readFileSync } from 'node:fs';
import { access, mkdir, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import amqp from 'amqplib';
import { getFreePort, isListening, retryOnPortClash } from './ports.js';
import { exited, ServiceDir } from './proc.js';
import { bringUp, ServiceServer } from './server.js';
import { sleep, until } from './wait.js';

export interface RabbitServer {
  /** `await using` destroys it. */
  [Symbol.asyncDispose](): Promise<void>;
  /** amqp://outboxd:secret@127.0.0.1:PORT/%2F (user with full permissions on vhosts / and outboxd_test) */
  url: string;
  /** amqp://outboxd:secret@127.0.0.1:PORT/outboxd_test */
  vhostUrl: string;
  port: number;
  /** e.g. outboxd-1a2b3c4d@localhost */
  nodeName: string;
  /** The temp dir holding config, data (mnesia/) and log; removed by destroy(). */
  dataDir: string;
  /**
   * 'graceful' (default): SIGTERM, RabbitMQ's orderly shutdown (~1 s); clients get
   * connection.close 320 CONNECTION_FORCED first. 'kill': SIGKILL, like a crash; clients see
   * the socket drop. Either way the data dir is kept. Idempotent.
   */
  stop(mode?: 'graceful' | 'kill'): Promise<void>;
  /** Starts the node again on the same ports and data; resolves once AMQP logins work (~2.5 s). */
  start(): Promise<void>;
  /** SIGSTOPs the node: it stops answering without closing a connection (a hung process). */
  pause(): void;
  /** SIGCONTs it. */
  resume(): void;
  /** Kills the node and its epmd, removes the temp dir. */
  destroy(): Promise<void>;
  /** Runs `rabbitmqctl ARGS...` against this node (needs it running); resolves with stdout. */
  ctl(...args: string[]): Promise<string>;
  /** With the `tls` option: amqps://127.0.0.1:PORT/%2F, a listener that requires a client certificate. */
  tlsUrl: string | undefined;
}

/**
 * A TLS listener (PEM files) that requires a client certificate, and with `external` the
 * EXTERNAL mechanism (plugin rabbitmq_auth_mechanism_ssl): the certificate's CN is the user name.
 */
export interface RabbitTlsOptions {
  caFile: string;
  certFile: string;
  keyFile: string;
  external?: boolean;
}

export const RABBIT_USER = 'outboxd';
export const RABBIT_PASSWORD = 'secret';
export const RABBIT_VHOST = 'outboxd_test';
/** Plugins enabled on every test node. */
export const RABBIT_PLUGINS = ['rabbitmq_consistent_hash_exchange'] as const;

const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 30_000;

/** The rabbitmq_server-X.Y.Z dir (with sbin/, escript/, plugins/) of the installed package. */
async function rabbitInstallDir(): Promise<string> {
  const override = process.env.OUTBOXD_RABBITMQ_HOME;
  let dir: string | undefined = override;
  if (!dir) {
    const base = '/usr/lib/rabbitmq/lib';
    const versions = (await readdir(base).catch(() => [] as string[]))
      .filter((d) => /^rabbitmq_server-\d/.test(d))
      .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
    const newest = versions.at(-1);
    if (newest) dir = join(base, newest);
  }
  try {
    if (!dir) throw new Error('not found');
    await access(join(dir, 'sbin', 'rabbitmq-server'), constants.X_OK);
  } catch {
    throw new Error(
      `RabbitMQ not found${dir ? ` in ${dir}` : ' under /usr/lib/rabbitmq/lib'}: apt-get install -y rabbitmq-server (or set OUTBOXD_RABBITMQ_HOME to a rabbitmq_server-X.Y.Z dir)`,
    );
  }
  return dir;
}

const pluginSetPromises = new Map<string, Promise<string[]>>();

/**
 * Names of the plugins-dir entries needed by rabbit + rabbitmq_prelaunch + RABBIT_PLUGINS:
 * the closure over the `applications` lists of their .app files (OTP apps are not in there).
 */
function neededPluginDirs(pluginsDir: string, plugins: readonly string[]): Promise<string[]> {
  const cacheKey = plugins.join(',');
  const cached = pluginSetPromises.get(cacheKey);
  if (cached) return cached;
  const pluginSetPromise = (async () => {
    const apps = new Map<string, { entry: string; deps: string[] }>();
    for (const entry of await readdir(pluginsDir)) {
      const dash = entry.lastIndexOf('-');
      const name = dash > 0 ? entry.slice(0, dash) : entry;
      let text: string;
      try {
        text = await readFile(join(pluginsDir, entry, 'ebin', `${name}.app`), 'utf8');
      } catch {
        continue; // README, or not an application dir
      }
      const deps = [...text.matchAll(/\{\s*(?:included_)?applications\s*,\s*\[([^\]]*)\]/g)].flatMap((m) =>
        (m[1] ?? '')
          .split(',')
          .map((s) => s.trim().replace(/^'(.*)'$/, '$1'))
          .filter(Boolean),
      );
      apps.set(name, { entry, deps });
    }
    const roots = ['rabbit', 'rabbitmq_prelaunch', ...plugins];
    const wanted = new Set<string>();
    const queue = [...roots];
    for (let app = queue.pop(); app !== undefined; app = queue.pop()) {
      if (wanted.has(app)) continue;
      const found = apps.get(app);
      if (!found) {
        if (roots.includes(app)) throw new Error(`RabbitMQ application ${app} not found in ${pluginsDir}`);
        continue; // an OTP application
      }
      wanted.add(app);
      queue.push(...found.deps);
    }
    return [...wanted].map((a) => apps.get(a)?.entry ?? a);
  })();
  pluginSetPromises.set(cacheKey, pluginSetPromise);
  pluginSetPromise.catch(() => {
    pluginSetPromises.delete(cacheKey);
  });
  return pluginSetPromise;
}

/** A process we may have to wait for / kill; `start` (from /proc/PID/stat) guards against pid reuse. */
interface ProcRef {
  pid: number;
  start: string;
}

function procStat(pid: number): { state: string; ppid: number; start: string } | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
  // cutime cstime priority nice threads itrealvalue starttime ..."; comm may contain anything.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { state: f[0] ?? '', ppid: Number(f[1]), start: f[19] ?? '' };
}

/** All descendants of `root` (Linux /proc; [] elsewhere). */
function descendants(root: number): ProcRef[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return [];
  }
  const children = new Map<number, ProcRef[]>();
  for (const e of entries) {
    const pid = Number(e);
    const s = procStat(pid);
    if (!s || s.state === 'Z') continue;
    children.set(s.ppid, [...(children.get(s.ppid) ?? []), { pid, start: s.start }]);
  }
  const out: ProcRef[] = [];
  const queue = [root];
  for (let p = queue.pop(); p !== undefined; p = queue.pop()) {
    for (const c of children.get(p) ?? []) {
      out.push(c);
      queue.push(c.pid);
    }
  }
  return out;
}

function running(p: ProcRef): boolean {
  const s = procStat(p.pid);
  return s !== undefined && s.state !== 'Z' && s.start === p.start;
}

/** Opens (and closes) an AMQP connection: proves listener, login, vhost and permissions. */
async function canConnect(url: string): Promise<boolean> {
  const conn = await amqp.connect(url, { timeout: 2000 });
  conn.on('error', () => undefined); // a node dying mid-probe must not crash the runner
  await conn.close().catch(() => undefined);
  return true;
}

class RabbitServerImpl extends ServiceServer implements RabbitServer {
  readonly url: string;
  readonly vhostUrl: string;
  readonly tlsUrl: string | undefined;
  readonly nodeName: string;
  readonly dataDir: string;
  private readonly home: string;
  private epmd: ChildProcess | undefined;

  constructor(
    private readonly install: string,
    readonly port: number,
    private readonly distPort: number,
    private readonly epmdPort: number,
    sd: ServiceDir,
    private readonly tls: (RabbitTlsOptions & { port: number }) | undefined = undefined,
  ) {
    super(sd, 'rabbitmq-server');
    const auth = `${RABBIT_USER}:${RABBIT_PASSWORD}@${HOST}:${port}`;
    this.url = `amqp://${auth}/%2F`;
    this.vhostUrl = `amqp://${auth}/${RABBIT_VHOST}`;
    this.tlsUrl = tls && `amqps://${HOST}:${tls.port}/%2F`;
    this.nodeName = `outboxd-${randomBytes(4).toString('hex')}@localhost`;
    this.dataDir = sd.dir;
    this.home = join(sd.dir, 'home');
  }

  private path(...parts: string[]): string {
    return join(this.sd.dir, ...parts);
  }

  /** A clean environment: nothing from the runner's RABBITMQ_* / ERL_* variables leaks in. */
  private env(): NodeJS.ProcessEnv {
    return {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: this.sd.dir, // .erlang.cookie, for the node and rabbitmqctl
      LANG: 'C.UTF-8',
      TZ: 'UTC',
      ERL_EPMD_PORT: String(this.epmdPort),
      ERL_EPMD_ADDRESS: HOST, // read by epmd only
      // rabbitmq-env derives RABBITMQ_HOME (hence the plugins dir and ERL_LIBS) from this.
      RABBITMQ_SCRIPTS_DIR: join(this.home, 'sbin'),
      RABBITMQ_NODENAME: this.nodeName,
      RABBITMQ_DIST_PORT: String(this.distPort),
      RABBITMQ_CONF_ENV_FILE: this.path('rabbitmq-env.conf'), // not /etc/rabbitmq/rabbitmq-env.conf
      RABBITMQ_CONFIG_FILE: this.path('rabbitmq.conf'),
      RABBITMQ_CONFIG_FILES: this.path('conf.d'), // not /etc/rabbitmq/conf.d
      RABBITMQ_ADVANCED_CONFIG_FILE: this.path('advanced.config'), // absent on purpose
      RABBITMQ_ENABLED_PLUGINS_FILE: this.path('enabled_plugins'),
      RABBITMQ_MNESIA_BASE: this.path('mnesia'),
      RABBITMQ_LOG_BASE: this.path('log'),
      RABBITMQ_LOGS: '-', // stdout, i.e. the service log file
      RABBITMQ_MOTD_FILE: this.path('motd'),
      // Unbound schedulers: other services and the tests share the (few) cores.
      RABBITMQ_SCHEDULER_BIND_TYPE: 'u',
      // rabbitmqctl's own distribution port: any free one (the default range 35672-35682 is shared).
      RABBITMQ_CTL_DIST_PORT_MIN: '0',
      RABBITMQ_CTL_DIST_PORT_MAX: '0',
    };
  }

  async init(): Promise<void> {
    // Private RABBITMQ_HOME: the package's scripts and escripts, and only the plugins we need.
    await mkdir(join(this.home, 'sbin'), { recursive: true });
    await mkdir(join(this.home, 'plugins'));
    for (const script of await readdir(join(this.install, 'sbin'))) {
      await symlink(join(this.install, 'sbin', script), join(this.home, 'sbin', script));
    }
    await symlink(join(this.install, 'escript'), join(this.home, 'escript'));
    const pluginsDir = join(this.install, 'plugins');
    for (const entry of await neededPluginDirs(pluginsDir, this.plugins())) {
      await symlink(join(pluginsDir, entry), join(this.home, 'plugins', entry));
    }

    await Promise.all([mkdir(this.path('mnesia')), mkdir(this.path('log')), mkdir(this.path('conf.d'))]);
    await writeFile(this.path('.erlang.cookie'), randomBytes(16).toString('hex').toUpperCase(), { mode: 0o400 });
    await writeFile(this.path('rabbitmq-env.conf'), '');
    await writeFile(this.path('enabled_plugins'), `[${this.plugins().join(',')}].\n`);
    const all = { configure: '.*', write: '.*', read: '.*' };
    const definitions = {
      // Plain `password` is hashed on import. Imported at every boot: a restart restores these.
      users: [{ name: RABBIT_USER, password: RABBIT_PASSWORD, tags: ['administrator'] }],
      vhosts: [{ name: '/' }, { name: RABBIT_VHOST }],
      permissions: [
        { user: RABBIT_USER, vhost: '/', ...all },
        { user: RABBIT_USER, vhost: RABBIT_VHOST, ...all },
      ],
    };
    await writeFile(this.path('definitions.json'), `${JSON.stringify(definitions, null, 2)}\n`);
    await writeFile(
      this.path('rabbitmq.conf'),
      [
        '# outboxd test harness',
        `listeners.tcp.default = ${HOST}:${this.port}`,
        // With definitions to load, RabbitMQ seeds no default user (no guest) and no default vhost.
        `load_definitions = ${this.path('definitions.json')}`,
        // The default (50 MB) would block all publishers on a nearly full CI disk.
        'disk_free_limit.absolute = 1MB',
        ...this.tlsConf(),
        '',
      ].join('\n'),
    );
  }

  private plugins(): string[] {
    return this.tls?.external ? [...RABBIT_PLUGINS, 'rabbitmq_auth_mechanism_ssl'] : [...RABBIT_PLUGINS];
  }

  private tlsConf(): string[] {
    const t = this.tls;
    if (!t) return [];
    return [
      `listeners.ssl.default = ${HOST}:${t.port}`,
      `ssl_options.cacertfile = ${t.caFile}`,
      `ssl_options.certfile = ${t.certFile}`,
      `ssl_options.keyfile = ${t.keyFile}`,
      'ssl_options.verify = verify_peer',
      'ssl_options.fail_if_no_peer_cert = true',
      ...(t.external
        ? ['auth_mechanisms.1 = PLAIN', 'auth_mechanisms.2 = AMQPLAIN', 'auth_mechanisms.3 = EXTERNAL', 'ssl_cert_login_from = common_name']
        : []),
    ];
  }

  private async ensureEpmd(): Promise<void> {
    if (this.epmd && !exited(this.epmd)) return;
    // In the foreground (no -daemon, which would setsid() out of our reach) in its own group.
    const child = this.sd.spawn('epmd', ['-port', String(this.epmdPort), '-address', HOST], { env: this.env() });
    this.epmd = child;
    // epmd exits 0 at once, silently, when something already answers on its port (it takes
    // that for a running epmd); say so in words retryOnPortClash recognises.
    const gone = (): string | undefined =>
      exited(child)
        ? `epmd exited (${child.exitCode ?? child.signalCode})${child.exitCode === 0 ? ': port taken (Address already in use)' : ''}`
        : undefined;
    await until(`epmd on port ${this.epmdPort}`, () => isListening(HOST, this.epmdPort), 10_000, 50, {
      tolerateErrors: true,
      abortReason: gone,
    });
    await sleep(100);
    const reason = gone();
    if (reason) throw new Error(`epmd on port ${this.epmdPort}: ${reason}`);
  }

  async start(): Promise<void> {
    if (this.running) return;
    const t0 = performance.now();
    try {
      await this.ensureEpmd();
    } catch (err) {
      throw this.sd.failure((err as Error).message);
    }
    await this.launch(
      join(this.home, 'sbin', 'rabbitmq-server'),
      [],
      { env: this.env() },
      async (abortReason) => {
        await until(
          `rabbitmq ${this.nodeName} on port ${this.port}`,
          async () => (await Promise.all([canConnect(this.url), canConnect(this.vhostUrl)])).every(Boolean),
          START_TIMEOUT_MS,
          100,
          { tolerateErrors: true, abortReason },
        );
        this.sd.note(`harness: AMQP logins work, ${Math.round(performance.now() - t0)} ms after spawn`);
      },
      (child) => this.kill(child),
      // retryOnPortClash looks for this text; RabbitMQ says eaddrinuse.
      (message) => (/eaddrinuse/i.test(this.sd.tail(300)) ? `${message} (Address already in use)` : message),
    );
  }

  stop(mode: 'graceful' | 'kill' = 'graceful'): Promise<void> {
    return this.halt(async (child) => {
      const t0 = performance.now();
      if (mode === 'kill') {
        await this.kill(child);
      } else {
        const ports = child.pid === undefined ? [] : descendants(child.pid);
        // The script traps SIGTERM and passes it on to beam, which stops RabbitMQ in order.
        await this.sd.terminate(child, 'SIGTERM', STOP_GRACE_MS);
        await this.reap(ports);
      }
      this.sd.note(`harness: stopped (${mode}) in ${Math.round(performance.now() - t0)} ms`);
    });
  }

  /** SIGKILLs the node's group, then waits for the port programs outside it. */
  private async kill(child: ChildProcess): Promise<void> {
    const ports = child.pid === undefined ? [] : descendants(child.pid);
    this.sd.killGroup(child, 'SIGKILL');
    await this.sd.terminate(child, 'SIGKILL', 5_000);
    await this.reap(ports);
  }

  /** Waits up to 3 s for `procs` (beam's port programs) to exit after beam, SIGKILLs the rest. */
  private async reap(procs: ProcRef[]): Promise<void> {
    for (let i = 0; i < 150 && procs.some(running); i++) await sleep(20);
    const left = procs.filter(running);
    if (left.length === 0) return;
    this.sd.note(`harness: killing leftover processes ${left.map((p) => p.pid).join(' ')}`);
    for (const p of left) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (let i = 0; i < 100 && left.some(running); i++) await sleep(20);
  }

  ctl(...args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(
        join(this.home, 'sbin', 'rabbitmqctl'),
        args,
        { env: this.env(), cwd: this.sd.dir, timeout: 60_000, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) => {
          if (err) reject(new Error(`rabbitmqctl ${args.join(' ')} failed: ${err.message}\n${stderr}`));
          else resolve(stdout);
        },
      );
    });
  }

  protected async stopForGood(): Promise<void> {
    await this.stop('kill');
    if (this.epmd) await this.sd.terminate(this.epmd, 'SIGKILL', 2_000);
  }
}

/** Starts a fresh RabbitMQ node; resolves once AMQP logins on both vhosts work. */
export async function startRabbitMQ(opts: { tls?: RabbitTlsOptions } = {}): Promise<RabbitServer> {
  const install = await rabbitInstallDir();
  return retryOnPortClash(async () => {
    const [port, distPort, epmdPort] = [await getFreePort(HOST), await getFreePort(HOST), await getFreePort(HOST)];
    const tls = opts.tls && { ...opts.tls, port: await getFreePort(HOST) };
    // SIGKILL when the runner dies: the data is thrown away anyway.
    const sd = await ServiceDir.create('rabbitmq', 'SIGKILL');
    const server = new RabbitServerImpl(install, port, distPort, epmdPort, sd, tls);
    return bringUp(server, () => server.init());
  });
}
