import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';

/**
 * One HTTP POST over node:http(s), for the OAuth token endpoint: node's fetch cannot be given a
 * CA, and a token endpoint behind a private CA is common. No redirect is followed (the client's
 * credentials go to the configured endpoint only), no connection is kept, and the answer is
 * bounded.
 */

/** A POST's answer: the status, and the body as text. */
export interface HttpAnswer {
  readonly status: number;
  readonly text: string;
}

export interface PostOptions {
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
  readonly timeoutMs: number;
  /** PEM: the CAs that may sign an https:// server's certificate, in place of Node's CA bundle. */
  readonly ca?: string | undefined;
}

/** Resolves with whatever the server answered (any status); rejects with a PostFailure when no answer came. */
export type HttpPost = (url: string, options: PostOptions) => Promise<HttpAnswer>;

/**
 * No answer, and why in a few words. `tls`: the server's certificate was refused or the TLS
 * handshake failed, which trying again will not mend.
 */
export class PostFailure extends Error {
  constructor(
    message: string,
    readonly tls: boolean,
  ) {
    super(message);
    this.name = 'PostFailure';
  }
}

/** A token answer is a few KiB; a server that sends more is not a token endpoint. */
export const MAX_ANSWER_BYTES = 1024 * 1024;

export const httpPost: HttpPost = (url, o) =>
  new Promise<HttpAnswer>((resolve, reject) => {
    const target = new URL(url);
    const send = target.protocol === 'https:' ? httpsRequest : httpRequest;
    const req = send(
      target,
      {
        method: 'POST',
        headers: { ...o.headers, 'content-length': String(Buffer.byteLength(o.body)) },
        agent: false,
        signal: AbortSignal.timeout(o.timeoutMs),
        ...(o.ca === undefined ? {} : { ca: o.ca }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > MAX_ANSWER_BYTES) res.destroy(new PostFailure(`the answer is over ${MAX_ANSWER_BYTES} bytes`, false));
          else chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', (err) => reject(failure(err)));
      },
    );
    req.on('error', (err) => reject(failure(err)));
    req.end(o.body);
  });

/** OpenSSL's certificate verification codes, Node's TLS errors, and a handshake that failed (EPROTO). */
const TLS_CODE =
  /^(ERR_TLS_|ERR_SSL_|EPROTO$|UNABLE_TO_|CERT_|SELF_SIGNED_|DEPTH_ZERO_|HOSTNAME_MISMATCH|INVALID_CA|INVALID_PURPOSE|PATH_LENGTH_)/;

function failure(err: unknown): PostFailure {
  if (err instanceof PostFailure) return err;
  const e = err as NodeJS.ErrnoException;
  if (e.name === 'AbortError' || e.code === 'ABORT_ERR') return new PostFailure('no answer in time', false);
  if (e.code !== undefined && TLS_CODE.test(e.code)) {
    // An OpenSSL error stack ("write EPROTO 80…:error:0A00010B:SSL routines:…:wrong version
    // number:file:line:") says it in its reason field. Node 24 appends advice about its
    // --use-system-ca flag to a refused certificate; the caller names the config key instead.
    const reason =
      /error:[0-9A-F]+:[^:]*:[^:]*:([^:\n]+)/.exec(e.message)?.[1] ?? e.message.replace(/; if the root CA is installed locally.*$/s, '');
    return new PostFailure(`TLS: ${reason} (${e.code})`, true);
  }
  return new PostFailure(e.code ?? e.message ?? String(err), false);
}
