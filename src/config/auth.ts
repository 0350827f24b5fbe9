import { createPrivateKey } from 'node:crypto';
import { ConfigError } from '../errors.js';
import type { ConfigInput } from './schema.js';
import { readConfigFile, readSecret } from './secrets.js';
import { parseDurationMs } from './units.js';

/**
 * The authentication part of the config (see config.ts): TLS files and keys, and Kafka's SASL
 * mechanisms, each with exactly its own keys.
 */

/** A validated duration (validate.ts checked it parses). */
const ms = (d: string): number => parseDurationMs(d) as number;

type SaslInput = NonNullable<ConfigInput['sink']['kafka']>['sasl'];

/**
 * sink.kafka.sasl: each mechanism with exactly its own keys. Plain data only: the worker threads
 * get this by structured clone and build their token providers from it (sink/kafka/auth.ts).
 */
export function compileSasl(s: SaslInput, tls: boolean) {
  if (s === undefined) return undefined;
  const at = 'sink.kafka.sasl';
  const mechanism = s.mechanism;
  const own = { oauthbearer: 'oauthbearer', 'aws-msk-iam': 'awsMskIam' } as const;
  const keys = { username: s.username, password: s.password ?? s.passwordFile, oauthbearer: s.oauthbearer, awsMskIam: s.awsMskIam };
  const allowed: readonly string[] =
    mechanism === 'oauthbearer' || mechanism === 'aws-msk-iam' ? [own[mechanism]] : ['username', 'password'];
  for (const [key, value] of Object.entries(keys)) {
    if (value !== undefined && !allowed.includes(key)) {
      throw new ConfigError(
        `${at}.${key === 'password' && s.password === undefined ? 'passwordFile' : key}`,
        `is not used by mechanism ${mechanism}; remove it`,
      );
    }
  }
  if (mechanism === 'oauthbearer') {
    const o = s.oauthbearer;
    if (o === undefined)
      throw new ConfigError(`${at}.oauthbearer`, 'is required for mechanism oauthbearer (tokenEndpoint, clientId, clientSecret)');
    return { mechanism, oauthbearer: compileOAuthBearer(`${at}.oauthbearer`, o) };
  }
  if (mechanism === 'aws-msk-iam') {
    const a = s.awsMskIam;
    if (a === undefined) throw new ConfigError(`${at}.awsMskIam`, 'is required for mechanism aws-msk-iam (region)');
    if (!/^[a-z]{2}(-[a-z]+)+-\d+$/.test(a.region))
      throw new ConfigError(`${at}.awsMskIam.region`, `must be an AWS region like eu-west-1, got "${a.region}"`);
    // MSK's IAM listeners (port 9098, 9198 public) speak TLS only.
    if (!tls)
      throw new ConfigError('sink.kafka.ssl', 'is required with sasl mechanism aws-msk-iam: MSK IAM listeners accept TLS only (ssl: true)');
    return { mechanism, awsMskIam: { region: a.region, profile: a.profile, roleArn: a.roleArn, roleSessionName: a.roleSessionName } };
  }
  if (s.username === undefined) throw new ConfigError(`${at}.username`, `is required for mechanism ${mechanism}`);
  if (s.password === undefined && s.passwordFile === undefined) throw new ConfigError(`${at}.password`, 'is required (or passwordFile)');
  return {
    mechanism,
    username: s.username,
    password: s.passwordFile !== undefined ? readSecret(`${at}.passwordFile`, s.passwordFile) : (s.password as string),
  };
}

/** RFC 7628 extension keys as Kafka accepts them (OAuthBearerClientInitialResponse), and values. */
const EXTENSION_NAME = /^[A-Za-z]+$/;
const EXTENSION_VALUE = /^[\x21-\x7E \t\r\n]+$/;

function compileOAuthBearer(at: string, o: NonNullable<NonNullable<SaslInput>['oauthbearer']>) {
  let endpoint: URL;
  try {
    endpoint = new URL(o.tokenEndpoint);
  } catch {
    // Not the value: it may hold a password (https://user:password@idp/…).
    throw new ConfigError(`${at}.tokenEndpoint`, 'is not a valid URL');
  }
  if (endpoint.protocol !== 'https:' && endpoint.protocol !== 'http:') {
    throw new ConfigError(`${at}.tokenEndpoint`, `must be an https:// URL, got ${endpoint.protocol}//`);
  }
  // The client secret goes in every request, and the token that comes back is a credential too.
  if (endpoint.protocol === 'http:' && !o.allowPlainHttp) {
    throw new ConfigError(
      `${at}.tokenEndpoint`,
      `is http://, which sends the client secret in clear text: use https:// (${at}.allowPlainHttp: true allows http:// for a loopback test endpoint)`,
    );
  }
  if (endpoint.protocol === 'http:' && o.tls !== undefined) {
    throw new ConfigError(`${at}.tls`, 'applies to an https:// tokenEndpoint only; remove it');
  }
  const extensions: Record<string, string> = {};
  o.extensions.forEach((e, i) => {
    if (!EXTENSION_NAME.test(e.name) || e.name === 'auth') {
      throw new ConfigError(`${at}.extensions[${i}].name`, `"${e.name}" is not a SASL extension name (letters only, not auth)`);
    }
    if (e.name in extensions) throw new ConfigError(`${at}.extensions[${i}].name`, `extension ${e.name} is listed twice`);
    if (!EXTENSION_VALUE.test(e.value)) throw new ConfigError(`${at}.extensions[${i}].value`, 'must be printable ASCII');
    extensions[e.name] = e.value;
  });
  return {
    tokenEndpoint: endpoint.toString(),
    clientId: o.clientId,
    clientSecret: o.clientSecretFile !== undefined ? readSecret(`${at}.clientSecretFile`, o.clientSecretFile) : (o.clientSecret as string),
    clientAuth: o.clientAuth,
    scope: o.scope,
    extensions,
    timeoutMs: ms(o.timeout),
    /** PEM: the CAs that may sign the endpoint's certificate, in place of Node's bundle. */
    ca: o.tls?.caFile === undefined ? undefined : readConfigFile(`${at}.tls.caFile`, o.tls.caFile),
  };
}

type TlsInput = NonNullable<ConfigInput['sink']['kafka']>['ssl'];

export function compileTls(path: string, t: TlsInput) {
  if (t === undefined || t === false) return undefined;
  if (t === true) {
    return { ca: undefined, cert: undefined, key: undefined, passphrase: undefined, rejectUnauthorized: true, servername: undefined };
  }
  const key = t.keyFile === undefined ? undefined : readSecret(`${path}.keyFile`, t.keyFile);
  const passphrase = t.keyPassphraseFile !== undefined ? readSecret(`${path}.keyPassphraseFile`, t.keyPassphraseFile) : t.keyPassphrase;
  const passphraseKey = t.keyPassphraseFile !== undefined ? `${path}.keyPassphraseFile` : `${path}.keyPassphrase`;
  if (passphrase !== undefined && key === undefined) throw new ConfigError(passphraseKey, 'is set but keyFile is not');
  if (key !== undefined) checkPrivateKey(path, t.keyFile as string, key, passphrase, passphraseKey);
  return {
    ca: t.caFile === undefined ? undefined : readConfigFile(`${path}.caFile`, t.caFile),
    cert: t.certFile === undefined ? undefined : readConfigFile(`${path}.certFile`, t.certFile),
    key,
    /** Decrypts an encrypted `key` (Node's TLS `passphrase`). */
    passphrase,
    rejectUnauthorized: t.rejectUnauthorized ?? true,
    servername: t.servername,
  };
}

/**
 * The client key must open with the passphrase given (or without one, unencrypted): found at
 * start, naming the key, rather than as a TLS failure on every connection attempt.
 */
function checkPrivateKey(path: string, file: string, key: string, passphrase: string | undefined, passphraseKey: string): void {
  try {
    // An explicit '' makes OpenSSL fail on an encrypted key instead of prompting for one.
    createPrivateKey({ key, format: 'pem', passphrase: passphrase ?? '' });
  } catch (err) {
    const { code, message } = err as NodeJS.ErrnoException;
    if (passphrase === undefined && (code === 'ERR_MISSING_PASSPHRASE' || /bad decrypt|passphrase/i.test(message))) {
      throw new ConfigError(`${path}.keyFile`, `${file} is encrypted: set ${path}.keyPassphrase or keyPassphraseFile`);
    }
    if (passphrase !== undefined && (code === 'ERR_OSSL_BAD_DECRYPT' || /bad decrypt/i.test(message))) {
      throw new ConfigError(passphraseKey, `does not decrypt the key in ${file} (${path}.keyFile): wrong passphrase`);
    }
    throw new ConfigError(`${path}.keyFile`, `${file} holds no PEM private key that opens: ${message}`);
  }
}
