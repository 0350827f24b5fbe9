import { createPrivateKey } from 'node:crypto';
import { ConfigError } from '../errors.js';

/**
 * The rules of the authentication sections (schema-auth.ts): TLS files and keys, and Kafka's
 * SASL mechanisms, each with exactly its own keys.
 */

/** The SASL mechanisms of sink.kafka.sasl. */
export const SASL_MECHANISMS = ['plain', 'scram-sha-256', 'scram-sha-512', 'oauthbearer', 'aws-msk-iam'] as const;
type SaslMechanism = (typeof SASL_MECHANISMS)[number];

/**
 * sink.kafka.sasl: each mechanism with exactly its own keys. Plain data only: the worker threads
 * get this by structured clone and build their token providers from it (sink/kafka/auth.ts).
 * `s` is the section compiled (a passwordFile read into password), `written` as written.
 */
export function saslOf<O, A extends { region: string }>(
  at: string,
  s: {
    mechanism: SaslMechanism;
    username: string | undefined;
    password: string | undefined;
    oauthbearer: O | undefined;
    awsMskIam: A | undefined;
  },
  written: { password?: string | undefined },
) {
  const mechanism = s.mechanism;
  const own = { oauthbearer: 'oauthbearer', 'aws-msk-iam': 'awsMskIam' } as const;
  const keys = { username: s.username, password: s.password, oauthbearer: s.oauthbearer, awsMskIam: s.awsMskIam };
  const allowed: readonly string[] =
    mechanism === 'oauthbearer' || mechanism === 'aws-msk-iam' ? [own[mechanism]] : ['username', 'password'];
  for (const [key, value] of Object.entries(keys)) {
    if (value !== undefined && !allowed.includes(key)) {
      throw new ConfigError(
        `${at}.${key === 'password' && written.password === undefined ? 'passwordFile' : key}`,
        `is not used by mechanism ${mechanism}; remove it`,
      );
    }
  }
  if (mechanism === 'oauthbearer') {
    if (s.oauthbearer === undefined)
      throw new ConfigError(`${at}.oauthbearer`, 'is required for mechanism oauthbearer (tokenEndpoint, clientId, clientSecret)');
    return { mechanism, oauthbearer: s.oauthbearer };
  }
  if (mechanism === 'aws-msk-iam') {
    const a = s.awsMskIam;
    if (a === undefined) throw new ConfigError(`${at}.awsMskIam`, 'is required for mechanism aws-msk-iam (region)');
    if (!/^[a-z]{2}(-[a-z]+)+-\d+$/.test(a.region))
      throw new ConfigError(`${at}.awsMskIam.region`, `must be an AWS region like eu-west-1, got "${a.region}"`);
    return { mechanism, awsMskIam: a };
  }
  if (s.username === undefined) throw new ConfigError(`${at}.username`, `is required for mechanism ${mechanism}`);
  if (s.password === undefined) throw new ConfigError(`${at}.password`, 'is required (or passwordFile)');
  return { mechanism, username: s.username, password: s.password };
}

/** RFC 7628 extension keys as Kafka accepts them (OAuthBearerClientInitialResponse), and values. */
const EXTENSION_NAME = /^[A-Za-z]+$/;
const EXTENSION_VALUE = /^[\x21-\x7E \t\r\n]+$/;

/** sasl.oauthbearer: the token endpoint checked (https://, unless allowed), the extensions as a record. */
export function oauthEndpoint(at: string, tokenEndpoint: string, allowPlainHttp: boolean, tls: boolean): string {
  let endpoint: URL;
  try {
    endpoint = new URL(tokenEndpoint);
  } catch {
    // Not the value: it may hold a password (https://user:password@idp/…).
    throw new ConfigError(`${at}.tokenEndpoint`, 'is not a valid URL');
  }
  if (endpoint.protocol !== 'https:' && endpoint.protocol !== 'http:') {
    throw new ConfigError(`${at}.tokenEndpoint`, `must be an https:// URL, got ${endpoint.protocol}//`);
  }
  // The client secret goes in every request, and the token that comes back is a credential too.
  if (endpoint.protocol === 'http:' && !allowPlainHttp) {
    throw new ConfigError(
      `${at}.tokenEndpoint`,
      `is http://, which sends the client secret in clear text: use https:// (${at}.allowPlainHttp: true allows http:// for a loopback test endpoint)`,
    );
  }
  if (endpoint.protocol === 'http:' && tls) throw new ConfigError(`${at}.tls`, 'applies to an https:// tokenEndpoint only; remove it');
  return endpoint.toString();
}

export function oauthExtensions(at: string, list: ReadonlyArray<{ name: string; value: string }>): Record<string, string> {
  const extensions: Record<string, string> = {};
  list.forEach((e, i) => {
    if (!EXTENSION_NAME.test(e.name) || e.name === 'auth') {
      throw new ConfigError(`${at}.extensions[${i}].name`, `"${e.name}" is not a SASL extension name (letters only, not auth)`);
    }
    if (e.name in extensions) throw new ConfigError(`${at}.extensions[${i}].name`, `extension ${e.name} is listed twice`);
    if (!EXTENSION_VALUE.test(e.value)) throw new ConfigError(`${at}.extensions[${i}].value`, 'must be printable ASCII');
    extensions[e.name] = e.value;
  });
  return extensions;
}

/**
 * TLS: `true` (Node's defaults) or the files, read (compile.ts); an encrypted key must open with
 * the passphrase given. `written` is the section as written: which of keyPassphrase and
 * keyPassphraseFile it names.
 */
export function tlsOf(
  path: string,
  t:
    | true
    | {
        ca: string | undefined;
        cert: string | undefined;
        key: string | undefined;
        keyPassphrase: string | undefined;
        rejectUnauthorized: boolean;
        servername: string | undefined;
      },
  written: unknown,
) {
  if (t === true) {
    return { ca: undefined, cert: undefined, key: undefined, passphrase: undefined, rejectUnauthorized: true, servername: undefined };
  }
  const { keyFile, keyPassphraseFile } = written as { keyFile?: string; keyPassphraseFile?: string };
  const { keyPassphrase: passphrase, ...files } = t;
  const passphraseKey = keyPassphraseFile !== undefined ? `${path}.keyPassphraseFile` : `${path}.keyPassphrase`;
  if (passphrase !== undefined && t.key === undefined) throw new ConfigError(passphraseKey, 'is set but keyFile is not');
  if (t.key !== undefined) checkPrivateKey(path, keyFile as string, t.key, passphrase, passphraseKey);
  /** passphrase: decrypts an encrypted `key` (Node's TLS `passphrase`). */
  return { ...files, passphrase };
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
