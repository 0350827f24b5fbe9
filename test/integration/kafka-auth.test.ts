/**
 * Kafka authentication against a real broker of this file's own (Kafka 4.1 KRaft): SASL
 * OAUTHBEARER with tokens from a client credentials endpoint served here over HTTPS, its
 * certificate from a throwaway CA the config names (unsecured JWTs, which the broker's default
 * validator checks: alg none, sub, exp, iat, scope), re-authentication
 * with short-lived tokens (the listener's connections.max.reauth.ms), mutual TLS with an
 * encrypted client key, and `validate --connect` naming the step that failed: token fetch,
 * SASL handshake or authorisation (KRaft's StandardAuthorizer, no ACLs, a few super users).
 */
import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TestPki } from '../harness/certs.js';
import { type KafkaServer, startKafka } from '../harness/kafka.js';
import { pgUrl } from '../harness/services.js';
import { CliProcess, pkiWithEncryptedKey, RelayProcess, removeDir, TestDb, TopicReader, writeConfig } from './support.js';

const CLIENT_ID = 'outboxd-relay';
const CLIENT_SECRET = 'Oauth-Cl1ent-S3cret';
const PASSPHRASE = 'Key-Passphr4se-S3cret';
const SCOPE = 'kafka';
/** The principal the broker lets do anything; other subjects have no ACLs. */
const SUPER = 'outboxd';

interface TokenRequest {
  authorization: string | undefined;
  form: URLSearchParams;
  at: number;
}

/**
 * An OAuth 2.0 token endpoint on loopback for the client credentials grant, over HTTPS when given
 * a certificate and key: checks HTTP Basic client authentication, answers 401 invalid_client
 * otherwise, and issues an unsecured JWT (alg none) with the subject, scope and lifetime the
 * test sets.
 */
class TokenEndpoint {
  readonly requests: TokenRequest[] = [];
  lifetimeS = 300;
  subject = SUPER;
  scope = SCOPE;
  private server: Server;
  url = '';

  constructor(private readonly tls?: { cert: Buffer; key: Buffer }) {
    const answer = (req: IncomingMessage, res: ServerResponse) => {
      void this.answer(req).then(({ status, body }) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(body));
      });
    };
    this.server = tls ? createHttpsServer(tls, answer) : createHttpServer(answer);
  }

  async start(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    const address = this.server.address();
    const scheme = this.tls ? 'https' : 'http';
    this.url = `${scheme}://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}/oauth2/token`;
    return this;
  }

  private async answer(req: IncomingMessage): Promise<{ status: number; body: object }> {
    let text = '';
    for await (const chunk of req) text += chunk;
    const form = new URLSearchParams(text);
    this.requests.push({ authorization: req.headers.authorization, form, at: Date.now() });
    const expected = `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`;
    if (req.method !== 'POST' || req.headers.authorization !== expected) {
      return { status: 401, body: { error: 'invalid_client', error_description: 'client authentication failed' } };
    }
    if (form.get('grant_type') !== 'client_credentials') return { status: 400, body: { error: 'unsupported_grant_type' } };
    const now = Math.floor(Date.now() / 1000);
    const part = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const jwt = `${part({ alg: 'none' })}.${part({ sub: this.subject, iat: now, exp: now + this.lifetimeS, scope: this.scope })}.`;
    return { status: 200, body: { access_token: jwt, token_type: 'Bearer', expires_in: this.lifetimeS } };
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

let kafka: KafkaServer;
/** HTTPS, its certificate signed by pki's CA. */
let endpoint: TokenEndpoint;
/** Plain HTTP, for allowPlainHttp. */
let plainEndpoint: TokenEndpoint;
let pki: TestPki;
let dir: string;

beforeAll(async () => {
  ({ dir, pki } = pkiWithEncryptedKey('outboxd-kafka-auth-', SUPER, PASSPHRASE));
  writeFileSync(join(dir, 'client-secret'), `${CLIENT_SECRET}\n`);
  writeFileSync(join(dir, 'wrong-passphrase'), 'not-the-passphrase\n');
  endpoint = await new TokenEndpoint({ cert: readFileSync(pki.serverCertFile), key: readFileSync(pki.serverKeyFile) }).start();
  plainEndpoint = await new TokenEndpoint().start();
  kafka = await startKafka({
    auth: {
      // Sessions end with the token (20 s in the refresh test): the client must re-authenticate.
      oauthbearer: { requiredScope: SCOPE, reauthMs: 600_000 },
      mtls: { keystoreFile: pki.serverKeystoreFile, caFile: pki.caFile },
      superUsers: [`User:${SUPER}`, `User:CN=${SUPER}`],
    },
  });
}, 180_000);

afterAll(async () => {
  await kafka?.destroy();
  await endpoint?.stop();
  await plainEndpoint?.stop();
  if (dir) removeDir(dir);
});

/** sink.kafka.sasl for the HTTPS endpoint, trusting its CA (or, with `ca: false`, Node's bundle only). */
function oauthSasl(secretFile: string, opts: { ca?: boolean; plain?: boolean } = {}): string {
  const trust = opts.plain ? '        allowPlainHttp: true\n' : opts.ca === false ? '' : `        tls: { caFile: ${pki.caFile} }\n`;
  return `    sasl:
      mechanism: oauthbearer
      oauthbearer:
        tokenEndpoint: ${(opts.plain ? plainEndpoint : endpoint).url}
        clientId: ${CLIENT_ID}
        clientSecretFile: ${secretFile}
        scope: ${SCOPE}
${trust}`;
}

function config(db: TestDb, brokers: string[], kafkaExtra: string, workers = 0): (port: number) => string {
  return (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
  statusInterval: 1s
  reconnect: { initial: 100ms, max: 1s }
sink:
  type: kafka
  kafka:
    brokers: [${brokers.join(', ')}]
    workers: ${workers}
    topic: auth.{aggregatetype}
${kafkaExtra}http:
  host: 127.0.0.1
  port: ${port}
log:
  level: debug
`;
}

async function insert(db: TestDb, type: string, n: number): Promise<string[]> {
  const ids = Array.from({ length: n }, () => randomUUID());
  await db.client.query(
    "INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) SELECT id, $1, 'k-' || id, 'Tested', '{}'::jsonb FROM unnest($2::uuid[]) id",
    [type, ids],
  );
  return ids;
}

function secretFree(text: string): void {
  for (const s of [CLIENT_SECRET, PASSPHRASE]) expect(text).not.toContain(s);
}

describe('Kafka SASL OAUTHBEARER', () => {
  it('publishes through a worker thread with tokens that expire every 20 s, fetching new ones before they do', async () => {
    endpoint.lifetimeS = 20;
    const type = `oauth${randomUUID().slice(0, 8)}`;
    await using db = await new TestDb(await pgUrl(17)).create();
    await using reader = new TopicReader(kafka.brokers);
    await reader.createTopics([`auth.${type}`]);
    await reader.start([`auth.${type}`]);
    await using cfg = await writeConfig(config(db, kafka.oauthBrokers, oauthSasl(join(dir, 'client-secret')), 1));
    const before = endpoint.requests.length;
    await using relay = new RelayProcess(cfg.file, cfg.port);
    await relay.ready();
    const ids = await insert(db, type, 100);
    await reader.waitForIds(ids);
    // Past two token lifetimes, rows keep flowing: each must be published on a session whose
    // token is still valid, or the broker closes the connection.
    const started = Date.now();
    while (Date.now() - started < 45_000) {
      ids.push(...(await insert(db, type, 10)));
      await new Promise((r) => setTimeout(r, 1_000)); // pacing: 10 rows a second for 45 s
    }
    await reader.waitForIds(ids, 60_000);
    const mine = endpoint.requests.slice(before);
    // Main thread and the worker each keep a token; each replaces it about every 5 s (20 s
    // lifetime, 15 s margin) when kafkajs re-authenticates (the session ends with the token).
    expect(mine.length).toBeGreaterThanOrEqual(4);
    const spanMs = (mine.at(-1)?.at ?? 0) - (mine[0]?.at ?? 0);
    expect(spanMs).toBeGreaterThan(30_000);
    for (const r of mine) {
      expect(r.form.get('grant_type')).toBe('client_credentials');
      expect(r.form.get('scope')).toBe(SCOPE);
      expect(r.form.has('client_secret')).toBe(false);
    }
    expect(await relay.metric('outboxd_publish_errors_total')).toBe(0);
    secretFree(relay.stderr);
  }, 150_000);

  it('stops at start with one line naming the token fetch when the endpoint refuses the client secret', async () => {
    endpoint.lifetimeS = 300;
    await using db = await new TestDb(await pgUrl(17)).create();
    writeFileSync(join(dir, 'wrong-secret'), 'Not-The-Secret\n');
    await using cfg = await writeConfig(config(db, kafka.oauthBrokers, oauthSasl(join(dir, 'wrong-secret'))));
    await using relay = new RelayProcess(cfg.file, cfg.port);
    expect(await relay.exited).toBe(1);
    const fatal = relay.stderr.split('\n').find((l) => l.includes('"level":"fatal"')) ?? '';
    expect(fatal).toContain(
      `SASL OAUTHBEARER token fetch from ${endpoint.url} failed: HTTP 401 invalid_client (client authentication failed)`,
    );
    const line = relay.stderr.trim().split('\n').at(-1) ?? '';
    expect(line).not.toContain('\\n');
    secretFree(relay.stderr);
  }, 60_000);

  it("stops at start with one line naming the endpoint and the TLS reason when the config lacks the endpoint's CA", async () => {
    await using db = await new TestDb(await pgUrl(17)).create();
    await using cfg = await writeConfig(config(db, kafka.oauthBrokers, oauthSasl(join(dir, 'client-secret'), { ca: false })));
    const before = endpoint.requests.length;
    await using relay = new RelayProcess(cfg.file, cfg.port);
    expect(await relay.exited).toBe(1);
    const fatal = relay.stderr.split('\n').find((l) => l.includes('"level":"fatal"')) ?? '';
    expect(fatal).toContain(
      `SASL OAUTHBEARER token fetch from ${endpoint.url} failed: TLS: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE); is the CA that signed its certificate in sink.kafka.sasl.oauthbearer.tls.caFile?`,
    );
    // Refused in the handshake: the client secret never reached the endpoint.
    expect(endpoint.requests.length).toBe(before);
    secretFree(relay.stderr);
  }, 60_000);

  it('stops at start with one line naming the broker when it refuses the token', async () => {
    endpoint.scope = 'other';
    try {
      await using db = await new TestDb(await pgUrl(17)).create();
      await using cfg = await writeConfig(config(db, kafka.oauthBrokers, oauthSasl(join(dir, 'client-secret'))));
      await using relay = new RelayProcess(cfg.file, cfg.port);
      expect(await relay.exited).toBe(1);
      const fatal = relay.stderr.split('\n').find((l) => l.includes('"level":"fatal"')) ?? '';
      expect(fatal).toMatch(
        /SASL OAUTHBEARER authentication failed: broker 127\.0\.0\.1:\d+ refused the token \(\{\\"status\\":\\"insufficient_scope\\", \\"scope\\":\\"\[kafka\]\\"\}\)","code"/,
      );
    } finally {
      endpoint.scope = SCOPE;
    }
  }, 60_000);
});

describe('validate --connect with Kafka authentication', () => {
  async function validate(kafkaExtra: string, brokers = kafka.oauthBrokers) {
    await using db = await new TestDb(await pgUrl(17)).create();
    await using cfg = await writeConfig(config(db, brokers, kafkaExtra));
    return await CliProcess.run(['validate', '-c', cfg.file, '--connect']);
  }
  const lineOf = (out: string, name: string) => out.split('\n').find((l) => l.includes(name)) ?? `(no ${name} line)`;

  it('passes token fetch, SASL handshake and authorisation for an authorised client', async () => {
    endpoint.subject = SUPER;
    endpoint.scope = SCOPE;
    const r = await validate(oauthSasl(join(dir, 'client-secret')));
    expect(lineOf(r.stdout, 'kafka token fetch'), r.stdout).toMatch(/ok/);
    expect(lineOf(r.stdout, 'kafka SASL handshake'), r.stdout).toMatch(/ok.*OAUTHBEARER accepted/);
    expect(lineOf(r.stdout, 'kafka authorisation'), r.stdout).toMatch(/ok/);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  }, 60_000);

  it('fetches from an http:// endpoint only with allowPlainHttp', async () => {
    const r = await validate(oauthSasl(join(dir, 'client-secret'), { plain: true }));
    expect(lineOf(r.stdout, 'kafka token fetch'), r.stdout).toMatch(/ok/);
    expect(lineOf(r.stdout, 'kafka SASL handshake'), r.stdout).toMatch(/ok.*OAUTHBEARER accepted/);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const refused = await validate(oauthSasl(join(dir, 'client-secret'), { plain: true }).replace('        allowPlainHttp: true\n', ''));
    expect(refused.code).toBe(3);
    // (The harness's Postgres password is "secret": registered for redaction, the word is masked.)
    expect(refused.stderr.trim()).toBe(
      'outboxd: config sink.kafka.sasl.oauthbearer.tokenEndpoint: is http://, which sends the client *** in clear text: use https:// (sink.kafka.sasl.oauthbearer.allowPlainHttp: true allows http:// for a loopback test endpoint)',
    );
  }, 60_000);

  it('names the token fetch when the endpoint refuses the client', async () => {
    writeFileSync(join(dir, 'wrong-secret'), 'Not-The-Secret\n');
    const r = await validate(oauthSasl(join(dir, 'wrong-secret')));
    expect(r.code).toBe(1);
    expect(lineOf(r.stdout, 'kafka token fetch'), r.stdout).toMatch(/fail.*token fetch from .* failed: HTTP 401 invalid_client/);
    expect(r.stdout).not.toContain('kafka SASL handshake');
  }, 60_000);

  it('names the SASL handshake when the broker refuses the token (scope missing)', async () => {
    endpoint.scope = 'other';
    try {
      const r = await validate(oauthSasl(join(dir, 'client-secret')));
      expect(r.code).toBe(1);
      expect(lineOf(r.stdout, 'kafka token fetch'), r.stdout).toMatch(/ok/);
      expect(lineOf(r.stdout, 'kafka SASL handshake'), r.stdout).toMatch(/fail.*the broker refused the OAUTHBEARER login/);
      expect(r.stdout).not.toContain('kafka authorisation');
    } finally {
      endpoint.scope = SCOPE;
    }
  }, 60_000);

  it('names authorisation when the principal may not produce', async () => {
    endpoint.subject = 'nobody';
    try {
      const r = await validate(oauthSasl(join(dir, 'client-secret')));
      expect(r.code).toBe(1);
      expect(lineOf(r.stdout, 'kafka SASL handshake'), r.stdout).toMatch(/ok/);
      expect(lineOf(r.stdout, 'kafka authorisation'), r.stdout).toMatch(/fail.*not authorised \(CLUSTER_AUTHORIZATION_FAILED\)/);
    } finally {
      endpoint.subject = SUPER;
    }
  }, 60_000);
});

describe('Kafka mutual TLS with an encrypted client key', () => {
  function mtls(passphraseFile: string): string {
    return `    ssl:
      caFile: ${pki.caFile}
      certFile: ${pki.clientCertFile}
      keyFile: ${pki.clientKeyFile}
      keyPassphraseFile: ${passphraseFile}
`;
  }

  it('publishes with the key opened by its passphrase', async () => {
    const type = `mtls${randomUUID().slice(0, 8)}`;
    await using db = await new TestDb(await pgUrl(17)).create();
    await using reader = new TopicReader(kafka.brokers);
    await reader.createTopics([`auth.${type}`]);
    await reader.start([`auth.${type}`]);
    await using cfg = await writeConfig(config(db, kafka.mtlsBrokers, mtls(join(dir, 'passphrase')), 1));
    await using relay = new RelayProcess(cfg.file, cfg.port);
    await relay.ready();
    const ids = await insert(db, type, 50);
    await reader.waitForIds(ids);
    secretFree(relay.stderr);
  }, 90_000);

  it('stops at start naming the key when the passphrase is wrong', async () => {
    await using db = await new TestDb(await pgUrl(17)).create();
    await using cfg = await writeConfig(config(db, kafka.mtlsBrokers, mtls(join(dir, 'wrong-passphrase'))));
    await using relay = new RelayProcess(cfg.file, cfg.port);
    expect(await relay.exited).toBe(3);
    expect(relay.stderr.trim()).toBe(
      `outboxd: config sink.kafka.ssl.keyPassphraseFile: does not decrypt the key in ${pki.clientKeyFile} (sink.kafka.ssl.keyFile): wrong passphrase`,
    );
  }, 30_000);
});
