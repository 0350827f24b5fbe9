import { createHash, createHmac } from 'node:crypto';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { OAuthBearerConfig } from '../../src/config/config.js';
import { createLogger } from '../../src/observability/logger.js';
import {
  awsMskIam,
  clientCredentials,
  initialResponse,
  jwtExpiry,
  REFRESH_MARGIN_MS,
  RETRY_AFTER_FAILURE_MS,
  refreshAtMs,
  type Token,
  TokenCache,
  TokenFetchError,
} from '../../src/sink/kafka/auth.js';
import { type HttpPost, type PostOptions, PostFailure } from '../../src/sink/kafka/http-post.js';

const silent = createLogger('silent');

afterEach(() => {
  vi.useRealTimers();
});

describe('token refresh timing', () => {
  it('replaces an hour-long token at 80% of its lifetime', () => {
    expect(refreshAtMs(0, 3_600_000)).toBe(2_880_000);
  });

  it('replaces a short token at least the margin before it expires, never before it was obtained', () => {
    expect(refreshAtMs(1_000, 21_000)).toBe(21_000 - REFRESH_MARGIN_MS);
    expect(refreshAtMs(1_000, 11_000)).toBe(1_000);
  });
});

describe('TokenCache', () => {
  function source(lifetimeMs: number, clock: { now: number }) {
    let n = 0;
    const calls: number[] = [];
    let fail: Error | null = null;
    const fn = async (): Promise<Token> => {
      calls.push(clock.now);
      if (fail) throw fail;
      n++;
      return { value: `t${n}`, expiresAtMs: clock.now + lifetimeMs };
    };
    return { fn, calls, failWith: (e: Error | null) => (fail = e) };
  }

  it('fetches once, hands the same token out until its refresh time, then fetches again', async () => {
    const clock = { now: 0 };
    const s = source(100_000, clock);
    const cache = new TokenCache(s.fn, silent, () => clock.now);
    expect((await cache.get()).value).toBe('t1');
    clock.now = 79_999;
    expect((await cache.get()).value).toBe('t1');
    expect(s.calls).toEqual([0]);
    clock.now = 80_000;
    expect((await cache.get()).value).toBe('t2');
    expect(s.calls).toEqual([0, 80_000]);
  });

  it('shares one request between concurrent callers', async () => {
    const clock = { now: 0 };
    const s = source(100_000, clock);
    const cache = new TokenCache(s.fn, silent, () => clock.now);
    const got = await Promise.all([cache.get(), cache.get(), cache.get()]);
    expect(got.map((t) => t.value)).toEqual(['t1', 't1', 't1']);
    expect(s.calls).toHaveLength(1);
  });

  it('keeps a still-valid token when a refresh fails, and tries again after a pause', async () => {
    const clock = { now: 0 };
    const s = source(100_000, clock);
    const cache = new TokenCache(s.fn, silent, () => clock.now);
    await cache.get();
    clock.now = 85_000;
    s.failWith(new TokenFetchError('idp down', true));
    expect((await cache.get()).value).toBe('t1');
    clock.now = 85_000 + RETRY_AFTER_FAILURE_MS - 1;
    expect((await cache.get()).value).toBe('t1');
    expect(s.calls).toHaveLength(2);
    s.failWith(null);
    clock.now = 85_000 + RETRY_AFTER_FAILURE_MS;
    expect((await cache.get()).value).toBe('t2');
  });

  it('rejects with the source error when there is no valid token left', async () => {
    const clock = { now: 0 };
    const s = source(100_000, clock);
    const cache = new TokenCache(s.fn, silent, () => clock.now);
    s.failWith(new TokenFetchError('SASL OAUTHBEARER token fetch from x failed: HTTP 401', false));
    await expect(cache.get()).rejects.toThrow('HTTP 401');
    s.failWith(null);
    await cache.get();
    clock.now = 99_500;
    s.failWith(new TokenFetchError('idp down', true));
    await expect(cache.get()).rejects.toThrow('idp down');
  });
});

describe('client credentials', () => {
  const cfg: OAuthBearerConfig = {
    tokenEndpoint: 'https://idp.example/oauth2/token',
    clientId: 'relay:1',
    clientSecret: 's3cr&t+/',
    clientAuth: 'basic',
    scope: 'kafka write',
    extensions: {},
    timeoutMs: 1_000,
    ca: undefined,
  };
  function fakeFetch(status: number, body: unknown) {
    const requests: Array<{ url: string; init: PostOptions }> = [];
    const impl: HttpPost = async (url, init) => {
      requests.push({ url, init });
      return { status, text: typeof body === 'string' ? body : JSON.stringify(body) };
    };
    return { impl, requests };
  }

  it('posts the grant with HTTP Basic of the form-encoded id and secret, and reads expires_in', async () => {
    const f = fakeFetch(200, { access_token: 'abc', token_type: 'Bearer', expires_in: 300 });
    const token = await clientCredentials(cfg, f.impl, () => 1_000)();
    expect(token).toEqual({ value: 'abc', expiresAtMs: 301_000 });
    const { url, init } = f.requests[0] as { url: string; init: PostOptions };
    expect(url).toBe(cfg.tokenEndpoint);
    expect(init.timeoutMs).toBe(1_000);
    const headers = init.headers as Record<string, string>;
    expect(headers.authorization).toBe(`Basic ${Buffer.from('relay%3A1:s3cr%26t%2B%2F').toString('base64')}`);
    expect(String(init.body)).toBe('grant_type=client_credentials&scope=kafka+write');
  });

  it('sends the id and secret in the body with clientAuth post', async () => {
    const f = fakeFetch(200, { access_token: 'abc', expires_in: 60 });
    await clientCredentials({ ...cfg, clientAuth: 'post', scope: undefined }, f.impl)();
    const init = f.requests[0]?.init as PostOptions;
    expect((init.headers as Record<string, string>).authorization).toBeUndefined();
    expect(String(init.body)).toBe('grant_type=client_credentials&client_id=relay%3A1&client_secret=s3cr%26t%2B%2F');
  });

  it('takes the expiry from the JWT when the answer has no expires_in', async () => {
    const jwt = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from('{"exp":1700000000}').toString('base64url')}.`;
    expect(jwtExpiry(jwt)).toBe(1_700_000_000_000);
    const token = await clientCredentials(cfg, fakeFetch(200, { access_token: jwt }).impl)();
    expect(token.expiresAtMs).toBe(1_700_000_000_000);
    await expect(clientCredentials(cfg, fakeFetch(200, { access_token: 'opaque' }).impl)()).rejects.toThrow(
      'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token: the answer has no expires_in and the token is not a JWT with exp',
    );
  });

  it('names the step, the status and the OAuth error; 401 is not retriable, 503 is', async () => {
    const refused = clientCredentials(cfg, fakeFetch(401, { error: 'invalid_client', error_description: 'bad secret' }).impl)();
    await expect(refused).rejects.toMatchObject({
      message:
        'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token failed: HTTP 401 invalid_client (bad secret) — check the client id and secret',
      retriable: false,
      reason: 'token_fetch',
    });
    await expect(clientCredentials(cfg, fakeFetch(503, 'upstream <b>down</b>\n').impl)()).rejects.toMatchObject({
      message: 'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token failed: HTTP 503 upstream <b>down</b>',
      retriable: true,
    });
  });

  it('reports an unreachable endpoint as retriable, with the network error', async () => {
    const down: HttpPost = async () => {
      throw new PostFailure('ECONNREFUSED', false);
    };
    await expect(clientCredentials(cfg, down)()).rejects.toMatchObject({
      message: 'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token failed: ECONNREFUSED',
      retriable: true,
    });
  });

  it('passes the CA on, and stops on a refused certificate or a redirect: neither is retried', async () => {
    const f = fakeFetch(200, { access_token: 'abc', expires_in: 60 });
    await clientCredentials({ ...cfg, ca: 'PEM' }, f.impl)();
    expect(f.requests[0]?.init.ca).toBe('PEM');
    const refused: HttpPost = async () => {
      throw new PostFailure('TLS: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE)', true);
    };
    await expect(clientCredentials(cfg, refused)()).rejects.toMatchObject({
      message:
        'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token failed: TLS: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE); is the CA that signed its certificate in sink.kafka.sasl.oauthbearer.tls.caFile?',
      retriable: false,
    });
    await expect(clientCredentials(cfg, fakeFetch(302, '').impl)()).rejects.toMatchObject({
      message:
        'SASL OAUTHBEARER token fetch from https://idp.example/oauth2/token failed: HTTP 302, a redirect, which is not followed: configure the endpoint it names',
      retriable: false,
    });
  });

  it('refuses an answer without an access token or of another token type', async () => {
    await expect(clientCredentials(cfg, fakeFetch(200, { expires_in: 60 }).impl)()).rejects.toThrow('the answer has no access_token');
    await expect(clientCredentials(cfg, fakeFetch(200, { access_token: 'a', token_type: 'mac', expires_in: 60 }).impl)()).rejects.toThrow(
      'token_type is mac, not Bearer',
    );
  });
});

describe('SASL/OAUTHBEARER initial response (RFC 7628)', () => {
  it('is the GS2 header, the bearer token and the extensions, separated by SOH', () => {
    expect(initialResponse('tok', {}).toString()).toBe('n,,\x01auth=Bearer tok\x01\x01');
    expect(initialResponse('tok', { logicalCluster: 'lkc-1', identityPoolId: 'pool-2' }).toString()).toBe(
      'n,,\x01auth=Bearer tok\x01logicalCluster=lkc-1\x01identityPoolId=pool-2\x01\x01',
    );
  });
});

describe('AWS MSK IAM token (aws-msk-iam-sasl-signer-js)', () => {
  const creds = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' };
  const hmac = (key: Buffer | string, text: string) => createHmac('sha256', key).update(text).digest();
  const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');
  /** RFC 3986 encoding, as SigV4 canonical query strings use it. */
  const enc = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

  it('is a base64url presigned kafka-cluster:Connect URL whose SigV4 signature checks out', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: new Date('2024-01-02T03:04:05Z') });
    const token = await awsMskIam(
      { region: 'eu-west-1', profile: undefined, roleArn: undefined, roleSessionName: undefined },
      async () => creds,
    )();
    expect(token.value).toMatch(/^[A-Za-z0-9_-]+$/);
    expect(token.expiresAtMs).toBe(Date.parse('2024-01-02T03:04:05Z') + 900_000);

    const url = new URL(Buffer.from(token.value, 'base64url').toString('utf8'));
    expect(url.protocol).toBe('https:');
    expect(url.host).toBe('kafka.eu-west-1.amazonaws.com');
    expect(url.pathname).toBe('/');
    const q = url.searchParams;
    expect(q.get('Action')).toBe('kafka-cluster:Connect');
    expect(q.get('X-Amz-Algorithm')).toBe('AWS4-HMAC-SHA256');
    expect(q.get('X-Amz-Credential')).toBe('AKIDEXAMPLE/20240102/eu-west-1/kafka-cluster/aws4_request');
    expect(q.get('X-Amz-Date')).toBe('20240102T030405Z');
    expect(q.get('X-Amz-Expires')).toBe('900');
    expect(q.get('X-Amz-SignedHeaders')).toBe('host');
    expect(q.get('User-Agent')).toMatch(/^aws-msk-iam-sasl-signer-js\//);

    // The signature, recomputed from the SigV4 spec: everything but the signature and the
    // User-Agent (added after signing) is signed.
    const signed = [...q.entries()]
      .filter(([k]) => k !== 'X-Amz-Signature' && k !== 'User-Agent')
      .map(([k, v]) => `${enc(k)}=${enc(v)}`)
      .sort()
      .join('&');
    const canonical = ['GET', '/', signed, 'host:kafka.eu-west-1.amazonaws.com', '', 'host', sha256('')].join('\n');
    const scope = '20240102/eu-west-1/kafka-cluster/aws4_request';
    const toSign = ['AWS4-HMAC-SHA256', '20240102T030405Z', scope, sha256(canonical)].join('\n');
    let key = hmac(`AWS4${creds.secretAccessKey}`, '20240102');
    for (const part of ['eu-west-1', 'kafka-cluster', 'aws4_request']) key = hmac(key, part);
    expect(q.get('X-Amz-Signature')).toBe(hmac(key, toSign).toString('hex'));
  });

  it('signs the session token of temporary credentials, and expires with them', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: new Date('2024-01-02T03:04:05Z') });
    const expiration = new Date('2024-01-02T03:09:05Z');
    const token = await awsMskIam(
      { region: 'us-east-1', profile: undefined, roleArn: undefined, roleSessionName: undefined },
      async () => ({
        ...creds,
        sessionToken: 'FwoGZXIvYXdzEXAMPLE',
        expiration,
      }),
    )();
    const q = new URL(Buffer.from(token.value, 'base64url').toString('utf8')).searchParams;
    expect(q.get('X-Amz-Security-Token')).toBe('FwoGZXIvYXdzEXAMPLE');
    expect(q.get('X-Amz-Expires')).toBe('300');
    expect(token.expiresAtMs).toBe(expiration.getTime());
  });

  it('names the signing step when there are no credentials', async () => {
    const none = async () => {
      throw Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' });
    };
    await expect(
      awsMskIam({ region: 'eu-west-1', profile: undefined, roleArn: undefined, roleSessionName: undefined }, none)(),
    ).rejects.toMatchObject({
      message: 'AWS MSK IAM token signing (region eu-west-1) failed: Could not load credentials from any providers',
      retriable: false,
    });
  });
});
