import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { clearSecrets, redact } from '../../src/redact.js';

const dir = mkdtempSync(join(tmpdir(), 'outboxd-config-auth-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => clearSecrets());

const PASSPHRASE = 'Corr3ct-Horse-Battery';
const pem = (passphrase?: string) =>
  generateKeyPairSync('ec', {
    namedCurve: 'P-256',
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: passphrase ? { type: 'pkcs8', format: 'pem', cipher: 'aes-256-cbc', passphrase } : { type: 'pkcs8', format: 'pem' },
  }).privateKey;
const file = (name: string, text: string) => {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
};
const encryptedKey = file('enc.key', pem(PASSPHRASE));
const plainKey = file('plain.key', pem());
const passphraseFile = file('passphrase', `${PASSPHRASE}\n`);

const kafka = (kafkaYaml: string) =>
  `postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [k:9092]\n${kafkaYaml.replace(/^/gm, '    ')}\n`;
const rabbit = (rabbitYaml: string) =>
  `postgres:\n  url: postgres://u@h/db\nsink:\n  type: rabbitmq\n  rabbitmq:\n    exchange: e\n${rabbitYaml.replace(/^/gm, '    ')}\n`;

function errorOf(yaml: string): string {
  try {
    parseConfig(yaml, {});
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).not.toContain('\n');
    return (err as Error).message;
  }
  throw new Error('expected a ConfigError');
}

const oauth = `sasl:
  mechanism: oauthbearer
  oauthbearer:
    tokenEndpoint: https://idp.example/oauth2/token
    clientId: relay
    clientSecret: Cl1ent-S3cret-Value
    scope: kafka
    extensions:
      - { name: logicalCluster, value: lkc-123 }`;

describe('sink.kafka.sasl', () => {
  it('compiles oauthbearer with its defaults', () => {
    const cfg = parseConfig(kafka(oauth), {});
    if (cfg.sink.type !== 'kafka') throw new Error('kafka');
    expect(cfg.sink.kafka.sasl).toEqual({
      mechanism: 'oauthbearer',
      oauthbearer: {
        tokenEndpoint: 'https://idp.example/oauth2/token',
        clientId: 'relay',
        clientSecret: 'Cl1ent-S3cret-Value',
        clientAuth: 'basic',
        scope: 'kafka',
        extensions: { logicalCluster: 'lkc-123' },
        timeoutMs: 10_000,
      },
    });
  });

  it('reads the client secret from a file and masks it in logs', () => {
    const secret = file('client-secret', 'From-A-F1le-Secret\n');
    const cfg = parseConfig(kafka(oauth.replace('clientSecret: Cl1ent-S3cret-Value', `clientSecretFile: ${secret}`)), {});
    if (cfg.sink.type !== 'kafka' || cfg.sink.kafka.sasl?.mechanism !== 'oauthbearer') throw new Error('oauthbearer');
    expect(cfg.sink.kafka.sasl.oauthbearer.clientSecret).toBe('From-A-F1le-Secret');
    expect(redact('token request with From-A-F1le-Secret failed')).toBe('token request with *** failed');
  });

  it('each mechanism takes only its own keys', () => {
    expect(errorOf(kafka(`${oauth}\n  username: u`))).toBe(
      'config sink.kafka.sasl.username: is not used by mechanism oauthbearer; remove it',
    );
    expect(errorOf(kafka('sasl:\n  mechanism: oauthbearer'))).toBe(
      'config sink.kafka.sasl.oauthbearer: is required for mechanism oauthbearer (tokenEndpoint, clientId, clientSecret)',
    );
    expect(errorOf(kafka('sasl:\n  mechanism: scram-sha-512\n  password: p'))).toBe(
      'config sink.kafka.sasl.username: is required for mechanism scram-sha-512',
    );
    expect(errorOf(kafka('sasl:\n  mechanism: plain\n  username: u'))).toBe(
      'config sink.kafka.sasl.password: is required (or passwordFile)',
    );
    expect(errorOf(kafka('sasl:\n  mechanism: plain\n  username: u\n  password: p\n  awsMskIam: { region: eu-west-1 }'))).toBe(
      'config sink.kafka.sasl.awsMskIam: is not used by mechanism plain; remove it',
    );
    expect(errorOf(kafka(oauth.replace('    clientSecret: Cl1ent-S3cret-Value\n', '')))).toBe(
      'config sink.kafka.sasl.oauthbearer.clientSecret: is required (or clientSecretFile)',
    );
  });

  it('checks the token endpoint and the extensions', () => {
    expect(errorOf(kafka(oauth.replace('https://idp.example/oauth2/token', 'ftp://idp/token')))).toBe(
      'config sink.kafka.sasl.oauthbearer.tokenEndpoint: must be an https:// URL, got ftp://',
    );
    // Not printed: a URL may carry a password.
    expect(errorOf(kafka(oauth.replace('https://idp.example/oauth2/token', 'https://relay:Pw-In-Url@')))).toBe(
      'config sink.kafka.sasl.oauthbearer.tokenEndpoint: is not a valid URL',
    );
    expect(errorOf(kafka(oauth.replace('name: logicalCluster', 'name: auth')))).toBe(
      'config sink.kafka.sasl.oauthbearer.extensions[0].name: "auth" is not a SASL extension name (letters only, not auth)',
    );
    expect(errorOf(kafka(oauth.replace('value: lkc-123', 'value: "a\\u0001b"')))).toBe(
      'config sink.kafka.sasl.oauthbearer.extensions[0].value: must be printable ASCII',
    );
  });

  it('refuses an http:// token endpoint unless allowPlainHttp says so, which takes no tls', () => {
    const plain = oauth.replace('https://idp.example/oauth2/token', 'http://127.0.0.1:8080/token');
    expect(errorOf(kafka(plain))).toBe(
      'config sink.kafka.sasl.oauthbearer.tokenEndpoint: is http://, which sends the client secret in clear text: use https:// (sink.kafka.sasl.oauthbearer.allowPlainHttp: true allows http:// for a loopback test endpoint)',
    );
    const cfg = parseConfig(kafka(`${plain}\n    allowPlainHttp: true`), {});
    if (cfg.sink.type !== 'kafka' || cfg.sink.kafka.sasl?.mechanism !== 'oauthbearer') throw new Error('oauthbearer');
    expect(cfg.sink.kafka.sasl.oauthbearer.tokenEndpoint).toBe('http://127.0.0.1:8080/token');
    const ca = file('idp-ca.pem', '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    expect(errorOf(kafka(`${plain}\n    allowPlainHttp: true\n    tls: { caFile: ${ca} }`))).toBe(
      'config sink.kafka.sasl.oauthbearer.tls: applies to an https:// tokenEndpoint only; remove it',
    );
  });

  it("reads the token endpoint's CA from tls.caFile", () => {
    const ca = file('idp-ca.pem', '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n');
    const cfg = parseConfig(kafka(`${oauth}\n    tls: { caFile: ${ca} }`), {});
    if (cfg.sink.type !== 'kafka' || cfg.sink.kafka.sasl?.mechanism !== 'oauthbearer') throw new Error('oauthbearer');
    expect(cfg.sink.kafka.sasl.oauthbearer.ca).toBe('-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----');
    const missing = join(dir, 'no-such-ca.pem');
    expect(errorOf(kafka(`${oauth}\n    tls: { caFile: ${missing} }`))).toBe(
      `config sink.kafka.sasl.oauthbearer.tls.caFile: cannot read ${missing}: ENOENT`,
    );
  });

  it('aws-msk-iam needs a region and TLS', () => {
    const msk = 'sasl:\n  mechanism: aws-msk-iam\n  awsMskIam:\n    region: eu-west-1';
    expect(errorOf(kafka(msk))).toBe(
      'config sink.kafka.ssl: is required with sasl mechanism aws-msk-iam: MSK IAM listeners accept TLS only (ssl: true)',
    );
    expect(errorOf(kafka(`ssl: true\n${msk.replace('eu-west-1', 'Ireland')}`))).toBe(
      'config sink.kafka.sasl.awsMskIam.region: must be an AWS region like eu-west-1, got "Ireland"',
    );
    const cfg = parseConfig(kafka(`ssl: true\n${msk}\n    roleArn: arn:aws:iam::123456789012:role/outboxd`), {});
    if (cfg.sink.type !== 'kafka') throw new Error('kafka');
    expect(cfg.sink.kafka.sasl).toEqual({
      mechanism: 'aws-msk-iam',
      awsMskIam: { region: 'eu-west-1', profile: undefined, roleArn: 'arn:aws:iam::123456789012:role/outboxd', roleSessionName: undefined },
    });
  });
});

describe('TLS key passphrases', () => {
  it('opens an encrypted key with its passphrase (file or value) and masks the passphrase', () => {
    for (const way of [`keyPassphraseFile: ${passphraseFile}`, `keyPassphrase: ${PASSPHRASE}`]) {
      const cfg = parseConfig(kafka(`ssl:\n  keyFile: ${encryptedKey}\n  ${way}`), {});
      if (cfg.sink.type !== 'kafka') throw new Error('kafka');
      expect(cfg.sink.kafka.ssl?.passphrase).toBe(PASSPHRASE);
      expect(redact(`x ${PASSPHRASE} y`)).toBe('x *** y');
    }
  });

  it('names the key when the passphrase is wrong or missing', () => {
    expect(errorOf(kafka(`ssl:\n  keyFile: ${encryptedKey}\n  keyPassphrase: wrong-one`))).toBe(
      `config sink.kafka.ssl.keyPassphrase: does not decrypt the key in ${encryptedKey} (sink.kafka.ssl.keyFile): wrong passphrase`,
    );
    expect(errorOf(rabbit(`url: amqps://u:p@h/v\ntls:\n  keyFile: ${encryptedKey}`))).toBe(
      `config sink.rabbitmq.tls.keyFile: ${encryptedKey} is encrypted: set sink.rabbitmq.tls.keyPassphrase or keyPassphraseFile`,
    );
    expect(errorOf(rabbit(`url: amqps://u:p@h/v\ntls:\n  keyFile: ${passphraseFile}`))).toMatch(
      new RegExp(`^config sink.rabbitmq.tls.keyFile: ${passphraseFile} holds no PEM private key that opens: `),
    );
    expect(errorOf(kafka(`ssl:\n  keyPassphrase: x`))).toBe('config sink.kafka.ssl.keyPassphrase: is set but keyFile is not');
    expect(errorOf(kafka(`ssl:\n  keyFile: ${encryptedKey}\n  keyPassphrase: a\n  keyPassphraseFile: ${passphraseFile}`))).toBe(
      'config sink.kafka.ssl.keyPassphraseFile: set either keyPassphrase or keyPassphraseFile, not both',
    );
  });

  it('takes an unencrypted key as before', () => {
    const cfg = parseConfig(rabbit(`url: amqps://u:p@h/v\ntls:\n  keyFile: ${plainKey}`), {});
    if (cfg.sink.type !== 'rabbitmq') throw new Error('rabbitmq');
    expect(cfg.sink.rabbitmq.tls?.passphrase).toBeUndefined();
  });
});

describe('sink.rabbitmq.authMechanism', () => {
  const cert = file('client.pem', '-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n');
  it('external needs amqps://, a client certificate, and no password', () => {
    const tls = `tls:\n  certFile: ${cert}\n  keyFile: ${plainKey}`;
    const cfg = parseConfig(rabbit(`url: amqps://h/v\nauthMechanism: external\n${tls}`), {});
    if (cfg.sink.type !== 'rabbitmq') throw new Error('rabbitmq');
    expect(cfg.sink.rabbitmq.authMechanism).toBe('external');
    expect(errorOf(rabbit(`url: amqp://h/v\nauthMechanism: external\n${tls}`))).toBe(
      'config sink.rabbitmq.url: must be amqps:// with authMechanism external',
    );
    expect(errorOf(rabbit('url: amqps://h/v\nauthMechanism: external\ntls: true'))).toBe(
      'config sink.rabbitmq.tls: needs certFile and keyFile with authMechanism external (the certificate is the login)',
    );
    expect(errorOf(rabbit(`url: amqps://u:p@h/v\nauthMechanism: external\n${tls}`))).toBe(
      'config sink.rabbitmq.url: a password is not used with authMechanism external; remove it',
    );
  });

  it('defaults to plain', () => {
    const cfg = parseConfig(rabbit('url: amqp://u:p@h/v'), {});
    if (cfg.sink.type !== 'rabbitmq') throw new Error('rabbitmq');
    expect(cfg.sink.rabbitmq.authMechanism).toBe('plain');
  });
});
