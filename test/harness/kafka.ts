/**
 * A throwaway single-node Apache Kafka 4.x (KRaft, combined broker+controller) for tests, on
 * free loopback ports in a temp dir. Jars come from scripts/fetch-kafka.sh (Maven Central,
 * cached in ~/.cache/outboxd); needs a Java 17+ `java` (JAVA_HOME honoured).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { pins, REPO_ROOT } from './pins.js';
import { getFreePort, isListening, retryOnPortClash } from './ports.js';
import { ServiceDir } from './proc.js';
import { type AbortReason, bringUp, ServiceServer } from './server.js';
import { until } from './wait.js';

export interface KafkaServer {
  /** `await using` destroys it. */
  [Symbol.asyncDispose](): Promise<void>;
  brokers: string[]; // ['127.0.0.1:PORT']
  /** With `auth.oauthbearer`: the SASL_PLAINTEXT OAUTHBEARER listener's broker list. */
  oauthBrokers: string[];
  /** With `auth.mtls`: the SSL listener's broker list (client certificate required). */
  mtlsBrokers: string[];
  /** The broker's log.dirs: `<topic>-<partition>/<base offset>.log` segments (for DumpLogSegments). */
  readonly dataDir: string;
  /** 'graceful' (default): SIGTERM, controlled shutdown; 'kill': SIGKILL, like a crash. */
  stop(mode?: 'graceful' | 'kill'): Promise<void>;
  start(): Promise<void>;
  /** SIGSTOPs the broker: it stops answering without closing a connection (a hung process). */
  pause(): void;
  /** SIGCONTs it. */
  resume(): void;
  destroy(): Promise<void>;
}

/** Broker version fetched when KAFKA_VERSION is not set (scripts/versions.json). */
export const DEFAULT_KAFKA_VERSION = pins.kafka;
const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 90_000;

const fetchScript = join(REPO_ROOT, 'scripts', 'fetch-kafka.sh');
let libsPromise: Promise<string> | undefined;

/** Directory of the broker jars: $OUTBOXD_KAFKA_LIBS, else fetched/cached by scripts/fetch-kafka.sh. */
export function kafkaLibs(): Promise<string> {
  const override = process.env.OUTBOXD_KAFKA_LIBS;
  if (override) return Promise.resolve(override);
  libsPromise ??= new Promise<string>((resolve, reject) => {
    execFile('bash', [fetchScript], { maxBuffer: 16 * 1024 * 1024, timeout: 600_000 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${fetchScript} failed: ${err.message}\n${stderr.split('\n').slice(-30).join('\n')}`));
        return;
      }
      const dir = stdout.trim().split('\n').pop() ?? '';
      if (!dir) reject(new Error(`${fetchScript} printed no directory`));
      else resolve(dir);
    });
  });
  libsPromise.catch(() => {
    libsPromise = undefined;
  });
  return libsPromise;
}

function javaBinary(): string {
  const home = process.env.JAVA_HOME;
  return home ? join(home, 'bin', 'java') : 'java';
}

/** A KRaft cluster id: 16 random bytes, url-safe base64 without padding (Kafka's Uuid format). */
export function clusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    // An id starting with '-' would be read as an option by StorageTool's argument parser.
    if (!id.startsWith('-')) return id;
  }
}

const LOG4J2 = `status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
# The config dumps at startup are hundreds of lines each.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
`;

/**
 * Listeners beside PLAINTEXT (which stays the inter-broker one, so the harness's own probes and
 * warm-up are unchanged), for authentication tests on a dedicated broker.
 */
export interface KafkaAuthOptions {
  /**
   * A SASL_PLAINTEXT listener with OAUTHBEARER. Tokens are checked by Kafka's validator for
   * unsecured JWTs (the default when no server callback handler is configured): alg none, `sub`,
   * `exp` and `iat` claims, and `requiredScope` in the `scope` claim when given. `reauthMs` sets
   * the listener's connections.max.reauth.ms (KIP-368): sessions last min(it, token lifetime),
   * and the client must re-authenticate before then.
   */
  oauthbearer?: { requiredScope?: string; reauthMs?: number };
  /** An SSL listener that requires a client certificate (PEM keystore and truststore). */
  mtls?: { keystoreFile: string; caFile: string };
  /**
   * KRaft's StandardAuthorizer with no ACLs and these super users (besides User:ANONYMOUS, the
   * PLAINTEXT and controller principal): anyone else is refused.
   */
  superUsers?: string[];
}

/** One node of a multi-node KRaft cluster (kafka-cluster.ts); a lone broker has none. */
export interface ClusterNode {
  /** node.id, 1 and up. */
  id: number;
  /** controller.quorum.voters: every node's `id@host:controllerPort`. */
  voters: string;
  /** The cluster id every node's storage is formatted with. */
  clusterId: string;
  /** Properties that replace the lone broker's (replication factors, min.insync.replicas). */
  props: Record<string, string>;
  /** The JVM's -Xmx. */
  heap: string;
}

export class KafkaServerImpl extends ServiceServer implements KafkaServer {
  readonly brokers: string[];
  readonly oauthBrokers: string[];
  readonly mtlsBrokers: string[];
  get dataDir(): string {
    return join(this.sd.dir, 'data');
  }

  constructor(
    private readonly libs: string,
    private readonly brokerPort: number,
    sd: ServiceDir,
    private readonly jvmFlavour: 'test' | 'kafka-defaults' = 'test',
    private readonly auth: KafkaAuthOptions & { oauthPort?: number; mtlsPort?: number } = {},
    private readonly node?: ClusterNode,
  ) {
    super(sd, node ? `kafka node ${node.id}` : 'kafka');
    this.brokers = [`${HOST}:${brokerPort}`];
    this.oauthBrokers = auth.oauthPort === undefined ? [] : [`${HOST}:${auth.oauthPort}`];
    this.mtlsBrokers = auth.mtlsPort === undefined ? [] : [`${HOST}:${auth.mtlsPort}`];
  }

  /** The properties of the listeners in `auth`. */
  private authProps(): { listeners: string[]; protocols: string[]; props: Record<string, string> } {
    const a = this.auth;
    const out = { listeners: [] as string[], protocols: [] as string[], props: {} as Record<string, string> };
    if (a.oauthPort !== undefined) {
      out.listeners.push(`OAUTH://${HOST}:${a.oauthPort}`);
      out.protocols.push('OAUTH:SASL_PLAINTEXT');
      const scope = a.oauthbearer?.requiredScope === undefined ? '' : ` unsecuredValidatorRequiredScope="${a.oauthbearer.requiredScope}"`;
      out.props['listener.name.oauth.sasl.enabled.mechanisms'] = 'OAUTHBEARER';
      out.props['listener.name.oauth.oauthbearer.sasl.jaas.config'] =
        `org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker"${scope};`;
      if (a.oauthbearer?.reauthMs !== undefined) {
        out.props['listener.name.oauth.oauthbearer.connections.max.reauth.ms'] = String(a.oauthbearer.reauthMs);
      }
    }
    if (a.mtlsPort !== undefined && a.mtls) {
      out.listeners.push(`MTLS://${HOST}:${a.mtlsPort}`);
      out.protocols.push('MTLS:SSL');
      Object.assign(out.props, {
        'listener.name.mtls.ssl.keystore.type': 'PEM',
        'listener.name.mtls.ssl.keystore.location': a.mtls.keystoreFile,
        'listener.name.mtls.ssl.truststore.type': 'PEM',
        'listener.name.mtls.ssl.truststore.location': a.mtls.caFile,
        'listener.name.mtls.ssl.client.auth': 'required',
      });
    }
    if (a.superUsers) {
      Object.assign(out.props, {
        'authorizer.class.name': 'org.apache.kafka.metadata.authorizer.StandardAuthorizer',
        'super.users': ['User:ANONYMOUS', ...a.superUsers].join(';'),
        'allow.everyone.if.no.acl.found': 'false',
      });
    }
    return out;
  }

  private get propsFile(): string {
    return join(this.sd.dir, 'server.properties');
  }

  private jvm(main: string, heap: string): string[] {
    const tuning =
      this.jvmFlavour === 'kafka-defaults'
        ? // What bin/kafka-server-start.sh runs with (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS):
          // benchmarks measure the broker as users run it.
          [
            '-Xmx1G',
            '-Xms1G',
            '-server',
            '-XX:+UseG1GC',
            '-XX:MaxGCPauseMillis=20',
            '-XX:InitiatingHeapOccupancyPercent=35',
            '-XX:+ExplicitGCInvokesConcurrent',
            '-XX:MaxInlineLevel=15',
          ]
        : [
            `-Xmx${heap}`,
            // Two cores: the serial collector avoids parallel GC threads fighting the tests for CPU.
            '-XX:+UseSerialGC',
            // C1 only: noticeably faster JVM start; a test broker never runs long enough for C2 to pay off.
            '-XX:TieredStopAtLevel=1',
          ];
    return [
      ...tuning,
      '-Djava.awt.headless=true',
      `-Dlog4j2.configurationFile=${join(this.sd.dir, 'log4j2.properties')}`,
      '-cp',
      `${this.libs}/*`,
      main,
    ];
  }

  private env(): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: this.sd.dir, LANG: 'C.UTF-8', TZ: 'UTC' };
    if (process.env.JAVA_HOME) env.JAVA_HOME = process.env.JAVA_HOME;
    return env;
  }

  async init(controllerPort: number): Promise<void> {
    const auth = this.authProps();
    const props = {
      'process.roles': 'broker,controller',
      'node.id': String(this.node?.id ?? 1),
      'controller.quorum.voters': this.node?.voters ?? `1@${HOST}:${controllerPort}`,
      listeners: [`PLAINTEXT://${HOST}:${this.brokerPort}`, `CONTROLLER://${HOST}:${controllerPort}`, ...auth.listeners].join(','),
      'advertised.listeners': [`PLAINTEXT://${HOST}:${this.brokerPort}`, ...auth.listeners].join(','),
      'controller.listener.names': 'CONTROLLER',
      'inter.broker.listener.name': 'PLAINTEXT',
      'listener.security.protocol.map': ['PLAINTEXT:PLAINTEXT', 'CONTROLLER:PLAINTEXT', ...auth.protocols].join(','),
      ...auth.props,
      'log.dirs': join(this.sd.dir, 'data'),
      'num.partitions': '3',
      'default.replication.factor': '1',
      'min.insync.replicas': '1',
      'auto.create.topics.enable': 'true',
      'offsets.topic.replication.factor': '1',
      // One partition each for the internal topics: 50 would make the first group/transaction
      // coordinator lookups wait for 50 partitions to be created and loaded.
      'offsets.topic.num.partitions': '1',
      'transaction.state.log.replication.factor': '1',
      'transaction.state.log.min.isr': '1',
      'transaction.state.log.num.partitions': '1',
      'share.coordinator.state.topic.replication.factor': '1',
      'share.coordinator.state.topic.min.isr': '1',
      'group.initial.rebalance.delay.ms': '0',
      // After a crash (stop('kill')) the controller keeps the dead incarnation registered and
      // rejects the new one (DUPLICATE_BROKER_REGISTRATION) until the broker session expires:
      // 9 s by default, 3 s here. Heartbeats every 500 ms keep a live broker well inside that.
      'broker.heartbeat.interval.ms': '500',
      'broker.session.timeout.ms': '3000',
      'num.network.threads': '2',
      'num.io.threads': '2',
      'num.recovery.threads.per.data.dir': '1',
      ...this.node?.props,
    };
    await writeFile(
      this.propsFile,
      `${Object.entries(props)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
    );
    await writeFile(join(this.sd.dir, 'log4j2.properties'), LOG4J2);
    await this.sd.run(
      javaBinary(),
      [...this.jvm('kafka.tools.StorageTool', '256m'), 'format', '-t', this.node?.clusterId ?? clusterId(), '-c', this.propsFile],
      {
        env: this.env(),
        timeoutMs: 120_000,
        label: 'kafka-storage format',
      },
    );
  }

  async start(): Promise<void> {
    if (this.running) return;
    await this.launch(
      javaBinary(),
      [...this.jvm('kafka.Kafka', this.node?.heap ?? '512m'), this.propsFile],
      { env: this.env() },
      async (abortReason) => {
        await until('kafka listener', () => isListening(HOST, this.brokerPort), START_TIMEOUT_MS, 50, {
          tolerateErrors: true,
          abortReason,
        });
        this.sd.note('harness: broker port accepts connections');
        // A cluster's node is usable once the cluster lists it; the cluster warms up as a whole.
        if (this.node) await this.waitRegistered(this.node.id, abortReason);
        else await this.waitUsable(abortReason);
        this.sd.note('harness: ready');
      },
      (child) => this.sd.terminate(child, 'SIGKILL', 0),
    );
  }

  /** Until an admin connected to this broker sees node `id` among the cluster's live brokers. */
  private async waitRegistered(id: number, abortReason: AbortReason): Promise<void> {
    const probe = new Kafka({
      clientId: 'outboxd-harness-probe',
      brokers: this.brokers,
      logLevel: logLevel.NOTHING,
      connectionTimeout: 1000,
      retry: { retries: 0 },
    });
    await until(
      `kafka node ${id} registered`,
      async () => {
        const admin = probe.admin();
        try {
          await admin.connect();
          return (await admin.describeCluster()).brokers.some((b) => b.nodeId === id);
        } finally {
          await admin.disconnect().catch(() => undefined);
        }
      },
      START_TIMEOUT_MS,
      100,
      { tolerateErrors: true, abortReason },
    );
  }

  /**
   * Ready = a kafkajs admin can connect and see the broker. Then warm up what the first test
   * would otherwise wait for (each step is retried by kafkajs with ERROR-level log lines):
   * creating/loading __consumer_offsets (group coordinator) and __transaction_state plus the
   * broker's first producer-id block (InitProducerId, used by idempotent producers too).
   */
  private async waitUsable(abortReason: AbortReason): Promise<void> {
    const probe = new Kafka({
      clientId: 'outboxd-harness-probe',
      brokers: this.brokers,
      logLevel: logLevel.NOTHING,
      connectionTimeout: 1000,
      retry: { retries: 0 },
    });
    await until(
      'kafka admin connection',
      async () => {
        const admin = probe.admin();
        try {
          await admin.connect();
          const cluster = await admin.describeCluster();
          return cluster.brokers.length > 0;
        } finally {
          await admin.disconnect().catch(() => undefined);
        }
      },
      START_TIMEOUT_MS,
      50,
      { tolerateErrors: true, abortReason },
    );
    this.sd.note('harness: kafkajs admin connected, warming up coordinators');
    await warmUpKafka(this.brokers);
  }

  stop(mode: 'graceful' | 'kill' = 'graceful'): Promise<void> {
    // SIGTERM = controlled shutdown (~2 s); 'kill' simulates a crash.
    return this.halt((child) => this.sd.terminate(child, mode === 'graceful' ? 'SIGTERM' : 'SIGKILL', 30_000));
  }

  protected stopForGood(): Promise<void> {
    return this.stop('kill');
  }
}

/**
 * Starts a fresh single-node KRaft broker; resolves once a kafkajs admin can use it. `jvm: 'test'` (the default) tunes the JVM for short test runs on two
 * cores; 'kafka-defaults' runs it with the settings of Kafka's own start script (benchmarks).
 */
export async function startKafka(opts: { jvm?: 'test' | 'kafka-defaults'; auth?: KafkaAuthOptions } = {}): Promise<KafkaServer> {
  const libs = await kafkaLibs();
  return retryOnPortClash(async () => {
    const [brokerPort, controllerPort] = [await getFreePort(HOST), await getFreePort(HOST)];
    const auth = {
      ...opts.auth,
      oauthPort: opts.auth?.oauthbearer ? await getFreePort(HOST) : undefined,
      mtlsPort: opts.auth?.mtls ? await getFreePort(HOST) : undefined,
    };
    const sd = await ServiceDir.create('kafka', 'SIGKILL');
    const server = new KafkaServerImpl(libs, brokerPort, sd, opts.jvm ?? 'test', auth);
    return bringUp(server, () => server.init(controllerPort));
  });
}

/**
 * Warms up what the first test would otherwise wait for (each step is retried by kafkajs):
 * creating/loading __consumer_offsets (group coordinator) and __transaction_state plus the
 * broker's first producer-id block (InitProducerId, used by idempotent producers too).
 */
export async function warmUpKafka(brokers: string[]): Promise<void> {
  const warm = new Kafka({
    clientId: 'outboxd-harness-warmup',
    brokers,
    logLevel: logLevel.NOTHING,
    retry: { initialRetryTime: 50, maxRetryTime: 500, retries: 30 },
  });
  const admin = warm.admin();
  const producer = warm.producer({ transactionalId: 'outboxd-harness-warmup', idempotent: true, maxInFlightRequests: 1 });
  try {
    await admin.connect();
    await producer.connect();
    await Promise.all([admin.describeGroups(['outboxd-harness-warmup']), producer.transaction().then((tx) => tx.abort())]);
  } finally {
    await producer.disconnect().catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}
