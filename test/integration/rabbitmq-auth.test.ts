/**
 * RabbitMQ certificate login against a real node of this file's own: a TLS listener that
 * requires a client certificate, and the EXTERNAL mechanism (rabbitmq_auth_mechanism_ssl,
 * user = the certificate's CN). The client key is encrypted and opened with its passphrase.
 */
import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import amqp from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestPki } from '../harness/certs.js';
import { RABBIT_USER, type RabbitServer, startRabbitMQ } from '../harness/rabbitmq.js';
import { pgUrl } from '../harness/services.js';
import { CliProcess, pkiWithEncryptedKey, RelayProcess, rabbitmqConfig, removeDir, TestDb, until, writeConfig } from './support.js';

const PASSPHRASE = 'Rabb1t-Key-Passphrase';

let rabbit: RabbitServer;
let pki: TestPki;
let dir: string;

beforeAll(async () => {
  // The client certificate's CN is the harness's user, who has every permission on /.
  ({ dir, pki } = pkiWithEncryptedKey('outboxd-rabbit-auth-', RABBIT_USER, PASSPHRASE));
  rabbit = await startRabbitMQ({ tls: { caFile: pki.caFile, certFile: pki.serverCertFile, keyFile: pki.serverKeyFile, external: true } });
}, 120_000);

afterAll(async () => {
  await rabbit?.destroy();
  if (dir) removeDir(dir);
});

function config(db: TestDb, exchange: string, passphraseFile: string): (port: number) => string {
  return rabbitmqConfig(
    db,
    `    url: ${rabbit.tlsUrl}
    authMechanism: external
    exchange: ${exchange}
    declare: true
    tls:
      caFile: ${pki.caFile}
      certFile: ${pki.clientCertFile}
      keyFile: ${pki.clientKeyFile}
      keyPassphraseFile: ${passphraseFile}
`,
    'log:\n  level: debug\n',
  );
}

describe('RabbitMQ EXTERNAL over TLS with an encrypted client key', () => {
  it('publishes, logged in by the client certificate alone', async () => {
    const exchange = `ext.${randomUUID().slice(0, 8)}`;
    await using db = await new TestDb(await pgUrl(17)).create();
    // Read back over the plain listener with the password login.
    const conn = await amqp.connect(rabbit.url);
    try {
      const ch = await conn.createChannel();
      await ch.assertExchange(exchange, 'topic', { durable: true });
      const q = (await ch.assertQueue('', { exclusive: true })).queue;
      await ch.bindQueue(q, exchange, '#');
      const got = new Set<string>();
      await ch.consume(q, (m) => m && got.add(String(m.properties.messageId)), { noAck: true });

      await using cfg = await writeConfig(config(db, exchange, join(dir, 'passphrase')));
      await using relay = new RelayProcess(cfg.file, cfg.port);
      await relay.ready();
      const ids = Array.from({ length: 20 }, () => randomUUID());
      await db.client.query(
        "INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) SELECT id, 'order', 'k', 'Placed', '{}'::jsonb FROM unnest($1::uuid[]) id",
        [ids],
      );
      await until('every id through the exchange', async () => ids.every((id) => got.has(id)), 30_000);
      // The broker saw an EXTERNAL login as the certificate's CN.
      const connections = await rabbit.ctl('list_connections', 'user', 'auth_mechanism', 'ssl', '--quiet');
      expect(connections).toMatch(new RegExp(`${RABBIT_USER}\\s+EXTERNAL\\s+true`));
      expect(relay.stderr).not.toContain(PASSPHRASE);

      const check = await CliProcess.run(['validate', '-c', cfg.file, '--connect']);
      expect(check.stdout).toMatch(/ok {4}rabbitmq broker: reachable/);
    } finally {
      await conn.close();
    }
  }, 90_000);

  it('stops at start naming the key when the passphrase is wrong', async () => {
    writeFileSync(join(dir, 'wrong'), 'wrong-passphrase\n');
    await using db = await new TestDb(await pgUrl(17)).create();
    await using cfg = await writeConfig(config(db, 'ext.wrong', join(dir, 'wrong')));
    const r = await CliProcess.run(['run', '-c', cfg.file]);
    expect(r.code).toBe(3);
    expect(r.stderr.trim()).toBe(
      `outboxd: config sink.rabbitmq.tls.keyPassphraseFile: does not decrypt the key in ${pki.clientKeyFile} (sink.rabbitmq.tls.keyFile): wrong passphrase`,
    );
  }, 30_000);
});
