import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { MAIN, RelayProcess, TestDb, removeDir, until, writeConfig } from '../integration/support.js';

/** Passwords never appear in logs, /metrics or error messages, whatever goes wrong. */
const PG_SECRET = 'Pg-Sup3r-S3cret';
const KAFKA_SECRET = 'Kafka-Sup3r-S3cret';
const AMQP_SECRET = 'Amqp-Sup3r-S3cret';
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function noSecrets(text: string): void {
  for (const s of [PG_SECRET, KAFKA_SECRET, AMQP_SECRET, encodeURIComponent(PG_SECRET)]) expect(text).not.toContain(s);
}

describe('secret hygiene', () => {
  it('a wrong Postgres password, an unreachable Postgres and unreachable brokers leak no password', async () => {
    const db = await new TestDb(inject('pg15Url')).create();
    cleanups.push(() => db.drop());
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
        const cfg = await writeConfig(
          (port) =>
            `postgres:\n  url: ${pgUrl}\n  slot: ${db.slot}\n  connectTimeout: 1s\n  reconnect: { initial: 100ms, max: 300ms }\nsink:\n${sink}http:\n  host: 127.0.0.1\n  port: ${port}\nlog:\n  level: debug\n`,
        );
        cleanups.push(() => removeDir(cfg.dir));
        const relay = new RelayProcess(cfg.file, cfg.port);
        cleanups.push(async () => {
          relay.kill('SIGKILL');
          await relay.exited;
        });
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
});
