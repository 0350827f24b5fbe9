import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { httpPost, MAX_ANSWER_BYTES, PostFailure } from '../../src/sink/kafka/http-post.js';
import { makePki, type TestPki } from '../harness/certs.js';

/**
 * The token endpoint's HTTP client against real servers on loopback: an HTTPS one with a
 * certificate from a throwaway CA, and a plain one.
 */
let dir: string;
let pki: TestPki;
let ca: string;
const servers: Server[] = [];
const seen: Array<{ method: string; body: string; type: string | undefined }> = [];

function handler(req: IncomingMessage, res: ServerResponse): void {
  let body = '';
  req.on('data', (c: Buffer) => {
    body += c.toString('utf8');
  });
  req.on('end', () => {
    seen.push({ method: req.method ?? '', body, type: req.headers['content-type'] });
    if (req.url === '/redirect') res.writeHead(302, { location: 'https://elsewhere.example/token' }).end();
    else if (req.url === '/slow')
      setTimeout(() => res.end('{}'), 2_000).unref(); // pacing: a server slower than the client's timeout
    else if (req.url === '/huge') res.end('x'.repeat(MAX_ANSWER_BYTES + 1));
    else res.writeHead(200, { 'content-type': 'application/json' }).end('{"access_token":"t"}');
  });
}

async function listen(server: Server, host = '127.0.0.1'): Promise<string> {
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  return `${host}:${(server.address() as AddressInfo).port}`;
}

let tlsAt: string;
/** The same certificate (for 127.0.0.1 and localhost) on another loopback address. */
let otherNameAt: string;
let plainAt: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'outboxd-http-post-'));
  pki = makePki(dir, { clientCn: 'unused' });
  ca = readFileSync(pki.caFile, 'utf8');
  const identity = { cert: readFileSync(pki.serverCertFile), key: readFileSync(pki.serverKeyFile) };
  tlsAt = await listen(createHttpsServer(identity, handler));
  otherNameAt = await listen(createHttpsServer(identity, handler), '127.0.0.2');
  plainAt = await listen(createHttpServer(handler));
}, 60_000);

afterAll(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  rmSync(dir, { recursive: true, force: true });
});

const post = (url: string, extra: { ca?: string; timeoutMs?: number } = {}) =>
  httpPost(url, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'a=1', timeoutMs: 1_000, ...extra });

describe('httpPost', () => {
  it('posts to an https:// server whose certificate the given CA signed', async () => {
    const before = seen.length;
    expect(await post(`https://${tlsAt}/token`, { ca })).toEqual({ status: 200, text: '{"access_token":"t"}' });
    expect(seen.slice(before)).toEqual([{ method: 'POST', body: 'a=1', type: 'application/x-www-form-urlencoded' }]);
  });

  it("refuses that server without the CA: a TLS failure that names OpenSSL's reason", async () => {
    const err = await post(`https://${tlsAt}/token`).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PostFailure);
    expect(err).toMatchObject({ tls: true, message: 'TLS: unable to verify the first certificate (UNABLE_TO_VERIFY_LEAF_SIGNATURE)' });
  });

  it('refuses a certificate for another name, even from the right CA', async () => {
    const err = await post(`https://${otherNameAt}/token`, { ca }).catch((e: unknown) => e);
    expect(err).toMatchObject({ tls: true, message: expect.stringMatching(/^TLS: .*ERR_TLS_CERT_ALTNAME_INVALID\)$/) });
  });

  it('posts to an http:// server, and an https:// request to it fails as TLS', async () => {
    expect((await post(`http://${plainAt}/token`)).status).toBe(200);
    const err = await post(`https://${plainAt}/token`, { ca }).catch((e: unknown) => e);
    expect(err).toMatchObject({ tls: true, message: 'TLS: wrong version number (EPROTO)' });
  });

  it('hands a redirect back instead of following it', async () => {
    expect(await post(`https://${tlsAt}/redirect`, { ca })).toEqual({ status: 302, text: '' });
  });

  it('gives up after timeoutMs, and on an answer over the bound', async () => {
    await expect(post(`http://${plainAt}/slow`, { timeoutMs: 200 })).rejects.toMatchObject({ tls: false, message: 'no answer in time' });
    await expect(post(`http://${plainAt}/huge`)).rejects.toMatchObject({
      tls: false,
      message: `the answer is over ${MAX_ANSWER_BYTES} bytes`,
    });
  });

  it('names a refused connection by its code', async () => {
    const closed = createHttpServer();
    const at = await listen(closed);
    await new Promise((r) => closed.close(r));
    servers.pop();
    await expect(post(`http://${at}/token`)).rejects.toMatchObject({ tls: false, message: 'ECONNREFUSED' });
  });
});
