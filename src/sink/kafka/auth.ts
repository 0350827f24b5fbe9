import type kafkajs from 'kafkajs';
import type { AwsMskIamConfig, OAuthBearerConfig, SaslConfig } from '../../config/config.js';
import { SinkError } from '../../errors.js';
import type { Logger } from '../../observability/logger.js';
import { installKafkajs } from './kafkajs-internals.js';
import { type HttpAnswer, type HttpPost, httpPost, PostFailure } from './http-post.js';

/**
 * Kafka SASL from the config: PLAIN and SCRAM as kafkajs has them, and OAUTHBEARER with a token
 * provider, fed by an OIDC client credentials grant or by AWS's MSK IAM signer.
 *
 * kafkajs calls the provider each time a connection authenticates: on connect, and again before
 * a request once less than `reauthenticationThreshold` (10 s) of the session the broker granted
 * is left (KIP-368; the broker grants min(connections.max.reauth.ms, the token's lifetime), or
 * an unlimited session when connections.max.reauth.ms is 0). The provider must cache: a relay has
 * several connections, and a broker with re-authentication asks for a token every session.
 *
 * Everything here is built from the plain config, so each worker thread builds its own provider
 * (functions cannot cross threads); each keeps its own token.
 */

/** A bearer token and the time it stops being valid. */
export interface Token {
  readonly value: string;
  readonly expiresAtMs: number;
}

/** Gets a new token. Rejects with a TokenFetchError that says which step failed. */
export type TokenSource = () => Promise<Token>;

/**
 * Getting a token failed. Deliberately without a `cause`: kafkajs wraps an error from the
 * provider as `cause: e.cause || e`, which would drop this error, and with it the retriable flag
 * that classify() reads, in favour of its cause. The cause's words are in the message instead.
 */
export class TokenFetchError extends SinkError {
  constructor(message: string, retriable: boolean) {
    super('token_fetch', message, { retriable });
  }
}

/**
 * How long before expiry a token is replaced: the larger of a fifth of its lifetime (as Java
 * clients do, sasl.login.refresh.window.factor 0.8) and this margin. The margin exceeds kafkajs's
 * re-authentication threshold (10 s): a token with less left than that would make kafkajs
 * re-authenticate before every request.
 */
export const REFRESH_MARGIN_MS = 15_000;
/** After a failed refresh while the current token is still good, the next try waits this long. */
export const RETRY_AFTER_FAILURE_MS = 5_000;
/** A token with less left than this is not handed out again after a failed refresh. */
const STILL_USABLE_MS = 1_000;

/** When a token obtained at `obtainedAtMs` should be replaced. */
export function refreshAtMs(obtainedAtMs: number, expiresAtMs: number): number {
  const lifetimeMs = expiresAtMs - obtainedAtMs;
  return Math.max(obtainedAtMs, expiresAtMs - Math.max(lifetimeMs / 5, REFRESH_MARGIN_MS));
}

/**
 * One token, shared by every connection of a client: fetched on first use, kept until its
 * refresh time, fetched again once then (concurrent callers share one request). When a refresh
 * fails while the current token is still valid, that token keeps being used and the refresh is
 * tried again after RETRY_AFTER_FAILURE_MS: an identity provider's hiccup does not stop
 * publishing before the token actually expires.
 */
export class TokenCache {
  private current: { token: Token; refreshAtMs: number } | null = null;
  private pending: Promise<Token> | null = null;

  constructor(
    private readonly source: TokenSource,
    private readonly log: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** A token valid now; rejects with the source's error when there is none. */
  get(): Promise<Token> {
    const c = this.current;
    if (c && this.now() < c.refreshAtMs) return Promise.resolve(c.token);
    this.pending ??= this.refresh().finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  private async refresh(): Promise<Token> {
    const held = this.current?.token;
    const obtainedAtMs = this.now();
    try {
      const token = await this.source();
      if (token.expiresAtMs <= this.now()) throw new TokenFetchError('the token fetched has already expired (is the clock right?)', true);
      this.current = { token, refreshAtMs: refreshAtMs(obtainedAtMs, token.expiresAtMs) };
      return token;
    } catch (err) {
      const now = this.now();
      if (held === undefined || held.expiresAtMs - now < STILL_USABLE_MS) throw err;
      this.current = { token: held, refreshAtMs: now + RETRY_AFTER_FAILURE_MS };
      this.log.warn(
        { err, expiresInMs: held.expiresAtMs - now },
        'refreshing the Kafka SASL token failed: the current one is used while it is valid',
      );
      return held;
    }
  }
}

/** kafkajs's `sasl` option for the configured mechanism. */
export function saslOptions(sasl: SaslConfig, log: Logger): kafkajs.SASLOptions | kafkajs.Mechanism {
  if (sasl.mechanism === 'oauthbearer' || sasl.mechanism === 'aws-msk-iam') {
    const source = sasl.mechanism === 'oauthbearer' ? clientCredentials(sasl.oauthbearer) : awsMskIam(sasl.awsMskIam);
    const cache = new TokenCache(source, log);
    const extensions = sasl.mechanism === 'oauthbearer' ? sasl.oauthbearer.extensions : {};
    return { mechanism: 'oauthbearer', authenticationProvider: oauthBearerAuthenticator(cache, extensions) };
  }
  return { mechanism: sasl.mechanism, username: sasl.username, password: sasl.password } as kafkajs.SASLOptions;
}

const SOH = '\x01';
/** kafkajs's own (not retriable), so kafkajs and classify() treat it like a refused SCRAM login; its types omit the message argument. */
function saslAuthenticationError(message: string): Error {
  const SaslAuthenticationError = installKafkajs().KafkaJSSASLAuthenticationError as unknown as new (message: string) => Error;
  return new SaslAuthenticationError(message);
}

/** The RFC 7628 client initial response: the GS2 header, the bearer token, the extensions. */
export function initialResponse(token: string, extensions: Readonly<Record<string, string>>): Buffer {
  const kvs = [`auth=Bearer ${token}`, ...Object.entries(extensions).map(([k, v]) => `${k}=${v}`)];
  return Buffer.from(`n,,${SOH}${kvs.join(SOH)}${SOH}${SOH}`);
}

/** SASL bytes as kafkajs's SaslAuthenticate request and response carry them: an int32 length first. */
function frame(b: Buffer): Buffer {
  const out = Buffer.alloc(4 + b.length);
  out.writeInt32BE(b.length, 0);
  b.copy(out, 4);
  return out;
}
const unframed = (b: Buffer): Buffer => (b.length < 4 || b.readInt32BE(0) <= 0 ? Buffer.alloc(0) : b.subarray(4, 4 + b.readInt32BE(0)));

/**
 * SASL/OAUTHBEARER through kafkajs's public custom-mechanism API, not its built-in one: a broker
 * that refuses a token does not fail the SaslAuthenticate request, it answers with an RFC 7628
 * error challenge (`{"status":"invalid_token"}`) and waits for the client's %x01. kafkajs 2.2.4
 * takes that challenge for success, and the next request on the connection finds it closed
 * ("No brokers in the broker pool", retried forever). Here the challenge is read, the exchange
 * finished as the RFC says, and the refusal reported as a SASL authentication error.
 */
function oauthBearerAuthenticator(
  cache: TokenCache,
  extensions: Readonly<Record<string, string>>,
): kafkajs.Mechanism['authenticationProvider'] {
  return ({ host, port, saslAuthenticate }) => ({
    authenticate: async () => {
      const { value } = await cache.get();
      const exchange = (bytes: Buffer) =>
        saslAuthenticate<Buffer>({ request: { encode: () => frame(bytes) }, response: { decode: unframed, parse: (b) => b } });
      let challenge: Buffer | undefined;
      try {
        challenge = (await exchange(initialResponse(value, extensions))) ?? undefined;
      } catch (err) {
        throw saslAuthenticationError(`SASL OAUTHBEARER authentication failed: ${(err as Error).message}`);
      }
      if (challenge === undefined || challenge.length === 0) return;
      // RFC 7628 §3.2.3: answer the error challenge with %x01; the broker then fails the exchange.
      const status = challenge.toString('utf8');
      let reason = '';
      try {
        await exchange(Buffer.from(SOH));
      } catch (err) {
        const message = (err as Error).message;
        if (!message.includes(status)) reason = `: ${message}`;
      }
      throw saslAuthenticationError(
        `SASL OAUTHBEARER authentication failed: broker ${host}:${port} refused the token (${status})${reason}`,
      );
    },
  });
}

/** Where an OAUTHBEARER mechanism's tokens come from; null for username/password mechanisms. */
export function tokenSource(sasl: SaslConfig): TokenSource | null {
  if (sasl.mechanism === 'oauthbearer') return clientCredentials(sasl.oauthbearer);
  if (sasl.mechanism === 'aws-msk-iam') return awsMskIam(sasl.awsMskIam);
  return null;
}

/** Where the token endpoint's CA goes. */
const CA_FILE_KEY = 'sink.kafka.sasl.oauthbearer.tls.caFile';

/** Form encoding, as RFC 6749 §2.3.1 asks for the client id and secret of HTTP Basic. */
const formEncode = (s: string): string => new URLSearchParams({ v: s }).toString().slice(2);

/** A field of an RFC 6749 §5.2 error answer, if the body is one. */
function oauthError(body: string): { error?: string; error_description?: string } {
  try {
    const v = JSON.parse(body) as unknown;
    return v !== null && typeof v === 'object' ? (v as { error?: string; error_description?: string }) : {};
  } catch {
    return {};
  }
}

/**
 * OIDC / OAuth 2.0 client credentials (RFC 6749 §4.4): POSTs grant_type=client_credentials (and
 * the scope) to the token endpoint, the client authenticated by HTTP Basic or in the body, and
 * reads access_token and expires_in (or, lacking it, the JWT's exp). A 4xx answer (bad client,
 * bad scope), a redirect or a refused certificate is not retriable; a 5xx, 408, 429 or a network
 * failure is. An https:// endpoint's certificate is checked against `ca` when the config gives
 * one (sink.kafka.sasl.oauthbearer.tls.caFile), else against Node's CA bundle.
 */
export function clientCredentials(cfg: OAuthBearerConfig, post: HttpPost = httpPost, now: () => number = Date.now): TokenSource {
  const step = `SASL OAUTHBEARER token fetch from ${cfg.tokenEndpoint}`;
  return async () => {
    const body = new URLSearchParams({ grant_type: 'client_credentials' });
    if (cfg.scope !== undefined) body.set('scope', cfg.scope);
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
    if (cfg.clientAuth === 'basic') {
      headers.authorization = `Basic ${Buffer.from(`${formEncode(cfg.clientId)}:${formEncode(cfg.clientSecret)}`).toString('base64')}`;
    } else {
      body.set('client_id', cfg.clientId);
      body.set('client_secret', cfg.clientSecret);
    }
    const sentAtMs = now();
    let answer: HttpAnswer;
    try {
      answer = await post(cfg.tokenEndpoint, { headers, body: body.toString(), timeoutMs: cfg.timeoutMs, ca: cfg.ca });
    } catch (err) {
      const tls = err instanceof PostFailure && err.tls;
      const hint = tls ? `; is the CA that signed its certificate in ${CA_FILE_KEY}?` : '';
      throw new TokenFetchError(`${step} failed: ${(err as Error)?.message ?? String(err)}${hint}`, !tls);
    }
    const { status, text } = answer;
    if (status >= 300 && status <= 399) {
      throw new TokenFetchError(
        `${step} failed: HTTP ${status}, a redirect, which is not followed: configure the endpoint it names`,
        false,
      );
    }
    if (status < 200 || status > 299) {
      const e = oauthError(text);
      const detail = e.error
        ? `${e.error}${e.error_description ? ` (${e.error_description})` : ''}`
        : text.replace(/\s+/g, ' ').trim().slice(0, 200);
      const hint = status === 401 || e.error === 'invalid_client' ? ' — check the client id and secret' : '';
      throw new TokenFetchError(
        `${step} failed: HTTP ${status}${detail ? ` ${detail}` : ''}${hint}`,
        status >= 500 || status === 408 || status === 429,
      );
    }
    let token: { access_token?: unknown; token_type?: unknown; expires_in?: unknown };
    try {
      token = JSON.parse(text) as typeof token;
    } catch {
      throw new TokenFetchError(`${step}: the answer is not JSON`, false);
    }
    const value = token.access_token;
    if (typeof value !== 'string' || value === '') throw new TokenFetchError(`${step}: the answer has no access_token`, false);
    if (typeof token.token_type === 'string' && token.token_type.toLowerCase() !== 'bearer') {
      throw new TokenFetchError(`${step}: token_type is ${token.token_type}, not Bearer`, false);
    }
    const expiresIn = Number(token.expires_in);
    if (token.expires_in !== undefined && Number.isFinite(expiresIn) && expiresIn > 0) {
      return { value, expiresAtMs: sentAtMs + expiresIn * 1000 };
    }
    const exp = jwtExpiry(value);
    if (exp === undefined) throw new TokenFetchError(`${step}: the answer has no expires_in and the token is not a JWT with exp`, false);
    return { value, expiresAtMs: exp };
  };
}

/** The `exp` of a JWT (seconds since the epoch) in ms, or undefined when `token` is not one. */
export function jwtExpiry(token: string): number | undefined {
  const payload = token.split('.')[1];
  if (payload === undefined) return undefined;
  try {
    const exp = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { exp?: unknown }).exp;
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** AWS credentials as the AWS SDK's providers resolve them. */
export interface AwsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

/**
 * AWS MSK IAM over OAUTHBEARER, signed by AWS's aws-msk-iam-sasl-signer-js (loaded on first use:
 * it brings the AWS SDK's credential providers). The token is a base64url SigV4-presigned URL
 * for kafka-cluster:Connect, valid 15 minutes (less when the credentials expire sooner).
 * Credentials: `credentials` (tests), else the role or profile configured, else the AWS SDK's
 * default chain (environment, web identity, ECS and EC2 roles, shared files).
 */
export function awsMskIam(cfg: AwsMskIamConfig, credentials?: () => Promise<AwsCredentials>): TokenSource {
  const step = `AWS MSK IAM token signing (region ${cfg.region})`;
  return async () => {
    const signer = await import('aws-msk-iam-sasl-signer-js');
    try {
      const r = credentials
        ? await signer.generateAuthTokenFromCredentialsProvider({ region: cfg.region, awsCredentialsProvider: credentials })
        : cfg.roleArn !== undefined
          ? await signer.generateAuthTokenFromRole({
              region: cfg.region,
              awsRoleArn: cfg.roleArn,
              ...(cfg.roleSessionName === undefined ? {} : { awsRoleSessionName: cfg.roleSessionName }),
            })
          : cfg.profile !== undefined
            ? await signer.generateAuthTokenFromProfile({ region: cfg.region, awsProfileName: cfg.profile })
            : await signer.generateAuthToken({ region: cfg.region });
      return { value: r.token, expiresAtMs: r.expiryTime };
    } catch (err) {
      // No credentials anywhere in the chain is a setup problem; STS or the metadata service
      // failing for a moment is not.
      const name = (err as Error)?.name ?? '';
      throw new TokenFetchError(
        `${step} failed: ${(err as Error)?.message ?? String(err)}`,
        name !== 'CredentialsProviderError' && !/cannot be empty/.test(String((err as Error)?.message)),
      );
    }
  };
}
