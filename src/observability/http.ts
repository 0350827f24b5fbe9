import { type Server, createServer } from 'node:http';
import type { Registry } from 'prom-client';
import type { Logger } from './logger.js';
import { redact } from '../redact.js';

export interface Health {
  /** The process is making progress (its loops are turning). */
  live(): { ok: boolean; detail: string };
  /** Connected, streaming, not blocked: ready to relay. */
  ready(): { ok: boolean; detail: string };
}

/** `/metrics`, `/livez`, `/readyz`. Resolves once listening; `address()` gives the bound port. */
export async function startHttp(host: string, port: number, registry: Registry, health: Health, log: Logger): Promise<Server> {
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
        (err: unknown) => {
          log.error({ err }, 'metrics collection failed');
          res.writeHead(500).end();
        },
      );
      return;
    }
    if (path === '/livez' || path === '/readyz') {
      const h = path === '/livez' ? health.live() : health.ready();
      res
        .writeHead(h.ok ? 200 : 503, { 'content-type': 'text/plain; charset=utf-8' })
        .end(`${h.ok ? 'ok' : 'not ok'}: ${redact(h.detail)}\n`);
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics, /livez or /readyz\n');
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}
