import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { startRabbitMQ } from '../harness/rabbitmq.js';
import { MAIN, RelayProcess, TestDb, defer, until, writeConfig } from '../integration/support.js';
import { pgUrl } from '../harness/services.js';

/** Passwords never appear in logs, /metrics or error messages, whatever goes wrong. */
const PG_SECRET = 'Pg-Sup3r-S3cret';
const KAFKA_SECRET = 'Kafka-Sup3r-S3cret';
const AMQP_SECRET = 'Amqp-Sup3r-S3cret';

function noSecrets(text: string): void {
  for (const s of [PG_SECRET, KAFKA_SECRET, AMQP_SECRET, encodeURIComponent(PG_SECRET)]) expect(text).not.toContain(s);
}

describe('secret hygiene', () => {
  it('a wrong Postgres password, an unreachable Postgres and unreachable brokers leak no password', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    const wrongPw = new URL(db.url);
    wrongPw.password = PG_SECRET;
    const closed = await getFreePort();
    const unreachable = new URL(db.url);
    unreachable.port = String(closed);
    unreachable.password = PG_SECRET;
    const sinks = [
      `  type: kafka\n  kafka:\n    brokers: [127.0.0.1:${closed}]\n    connectionTimeout: 500ms\n    sasl: { mechanism: scram-sha-512, username: u, password: ${KAFKA_SECRET} }\n`,
      `  type: rabbitmq\n  rabbitmq:\n    url: amqp://u:${AMQP_SECRET}@127.0.0.1:${closed}/%2F\n    exchange: e\n    connectionTimeout: 500ms\n`,
      '  type: stdout\n',
    ];
    for (const pgUrl of [wrongPw.toString(), unreachable.toString()]) {
      for (const sink of sinks) {
        await using cfg = await writeConfig(
          (port) =>
            `postgres:\n  url: ${pgUrl}\n  slot: ${db.slot}\n  connectTimeout: 1s\n  reconnect: { initial: 100ms, max: 300ms }\nsink:\n${sink}http:\n  host: 127.0.0.1\n  port: ${port}\nlog:\n  level: debug\n`,
        );
        await using relay = new RelayProcess(cfg.file, cfg.port);
        // Let it fail and retry a few times (debug logging on: the chattiest it gets).
        await until('some failures logged', async () => relay.stderr.split('\n').length > 3 || relay.child.exitCode !== null, 15_000);
        const metrics = await relay.http('/metrics').catch(() => ({ body: '' }));
        noSecrets(relay.stderr);
        noSecrets(relay.stdout);
        noSecrets(metrics.body);
        relay.kill('SIGTERM');
        await relay.exited;
        noSecrets(relay.stderr);

        const check = spawnSync(process.execPath, [MAIN, 'validate', '-c', cfg.file, '--connect'], { encoding: 'utf8', timeout: 60_000 });
        expect(check.status).not.toBe(0);
        noSecrets(check.stdout + check.stderr);
        const status = spawnSync(process.execPath, [MAIN, 'status', '-c', cfg.file], { encoding: 'utf8', timeout: 60_000 });
        noSecrets(status.stdout + status.stderr);
      }
    }
  }, 240_000);

  it('a secret planted in the fatal message, its stack, a /readyz body and an uncaught crash never leaves the process', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    // The password is also the name of a database that does not exist: Postgres echoes it in the
    // error that stops the relay (fatal log message, and its stack with OUTBOXD_LOG_STACKS=1).
    const role = `r_${db.name.slice(2)}`;
    await db.client.query(`CREATE ROLE ${role} LOGIN PASSWORD '${PG_SECRET}'`);
    await using _role = defer(() => db.client.query(`DROP ROLE ${role}`));
    const plant = new URL(db.url);
    plant.username = role;
    plant.password = '';
    plant.pathname = `/${PG_SECRET}`;
    await using fatalCfg = await writeConfig(
      (port) =>
        `postgres:
  url: ${plant.toString()}
  password: ${PG_SECRET}
  slot: ${db.slot}
http:
  host: 127.0.0.1
  port: ${port}
log:
  level: debug
`,
    );
    await using fatal = new RelayProcess(fatalCfg.file, fatalCfg.port, { OUTBOXD_LOG_STACKS: '1' });
    expect(await fatal.exited).not.toBe(0);
    expect(fatal.stderr).toMatch(/"level":"fatal"/);
    expect(fatal.stderr).toMatch(/database \\"\*\*\*\\" does not exist/);
    expect(fatal.stderr).toMatch(/"stack":/);
    noSecrets(fatal.stderr);

    // A user whose password is also the name of a vhost it cannot open: the broker's refusal,
    // retried, names it in /readyz. (A node of our own, to add the user.)
    await using rabbit = await startRabbitMQ();
    await rabbit.ctl('add_user', 'planted', AMQP_SECRET);
    await rabbit.ctl('set_permissions', '-p', '/', 'planted', '.*', '.*', '.*');
    const amqp = new URL(rabbit.url);
    amqp.username = 'planted';
    amqp.password = AMQP_SECRET;
    amqp.pathname = `/${AMQP_SECRET}`;
    await using readyCfg = await writeConfig(
      (port) =>
        `postgres:
  url: ${db.url}
  slot: ${db.slot}
sink:
  type: rabbitmq
  rabbitmq:
    url: ${amqp.toString()}
    exchange: e
    connectionTimeout: 1s
http:
  host: 127.0.0.1
  port: ${port}
`,
    );
    await using unready = new RelayProcess(readyCfg.file, readyCfg.port);
    const body = await until(
      'a /readyz body about the sink',
      async () => {
        const r = await unready.http('/readyz').catch(() => ({ status: 0, body: '' }));
        return r.body.includes('rabbitmq unavailable') ? r.body : undefined;
      },
      30_000,
    );
    // The planted value did reach the body, and came out redacted.
    expect(body).toContain('refused to open vhost "***"');
    noSecrets(body);
    noSecrets((await unready.http('/livez')).body);

    // An error nothing catches ends in one redacted line, not Node's report. Thrown once outboxd
    // has its handler (a poll, not a delay that a slow start would outlast).
    const crash = spawnSync(
      process.execPath,
      [
        '--import',
        `data:text/javascript,const t = setInterval(() => { if (process.listenerCount('uncaughtException') > 0) { clearInterval(t); throw new Error('lost postgres://u:${PG_SECRET}@db/x?password=${KAFKA_SECRET}'); } }, 5)`,
        MAIN,
        'run',
        '-c',
        readyCfg.file,
      ],
      { encoding: 'utf8', timeout: 30_000, env: { ...process.env, OUTBOXD_HTTP_PORT: '0' } },
    );
    expect(crash.status).toBe(1);
    expect(crash.stderr).toMatch(/^outboxd: internal error \(uncaught exception\): lost postgres:\/\/u:\*\*\*@db\/x\?password=\*\*\*$/m);
    noSecrets(crash.stdout + crash.stderr);
  }, 120_000);
});
