import { describe, expect, it } from 'vitest';
import { sleep, until, writeOutbox } from '../integration/support.js';
import { type SinkKind, bundle, orderAndDuplicates, startDelivering, waitDelivered } from './fixtures.js';
import { TcpProxy } from './proxy.js';
import { pgUrl, kafkaBrokers, rabbitmqUrl } from '../harness/services.js';

/**
 * Network faults through a TCP proxy, between the relay and Postgres and between the relay and
 * the broker: cut connections, added latency, and a stall that keeps TCP open but answers nothing.
 */
/** A started proxy to `hostPort`; `await using` closes it. */
async function proxyTo(hostPort: string): Promise<TcpProxy> {
  const [host, port] = hostPort.split(':') as [string, string];
  const p = new TcpProxy(host, Number(port));
  await p.start();
  return p;
}

function amqpHostPort(url: string): string {
  const u = new URL(url.replace(/^amqp/, 'http'));
  return `${u.hostname}:${u.port}`;
}

function amqpViaProxy(url: string, port: number): string {
  const u = new URL(url.replace(/^amqp/, 'http'));
  u.port = String(port);
  return u.toString().replace(/^http/, 'amqp');
}

/** A proxy in front of the shared broker, and the address the relay should use to go through it. */
async function brokerProxy(kind: SinkKind): Promise<{ proxy: TcpProxy; relayBroker: string } & AsyncDisposable> {
  const target = kind === 'kafka' ? ((await kafkaBrokers())[0] as string) : amqpHostPort(await rabbitmqUrl());
  const proxy = await proxyTo(target);
  return {
    proxy,
    relayBroker: kind === 'kafka' ? `127.0.0.1:${proxy.port}` : amqpViaProxy(await rabbitmqUrl(), proxy.port),
    [Symbol.asyncDispose]: () => proxy.close(),
  };
}

function pgHostPort(url: string): string {
  const u = new URL(url);
  return `${u.hostname}:${u.port}`;
}

function viaProxy(url: string, port: number): string {
  const u = new URL(url);
  u.port = String(port);
  return u.toString();
}

describe('network faults: relay ↔ Postgres', () => {
  it('cut connections and added latency: reconnects and resumes from the slot, no id lost', async () => {
    await using proxy = await proxyTo(pgHostPort(await pgUrl(15)));
    await using b = await bundle({ kind: 'kafka', pgUrlRewrite: (url) => viaProxy(url, proxy.port) });
    const relay = b.start();
    await relay.ready();
    const first = await writeOutbox(b.db.client, { total: 3_000, keys: 100, types: b.types });
    proxy.cutAll();
    proxy.latencyMs = 20;
    const second = await writeOutbox(b.db.client, { total: 3_000, keys: 100, types: b.types });
    // Cut again once the relay streams the second batch (through the added latency).
    const secondIds = new Set(second.map((r) => r.id));
    await until('rows of the second batch delivered', async () => b.reader.delivered().some((d) => secondIds.has(d.id)), 60_000, 50);
    proxy.cutAll();
    await waitDelivered(
      b.reader,
      [...first, ...second].map((r) => r.id),
    );
    expect(await relay.metric('outboxd_reconnects_total', { target: 'postgres' })).toBeGreaterThanOrEqual(1);
    const firstIds = new Set(first.map((r) => r.id));
    expect(orderAndDuplicates(b.reader.delivered().filter((d) => firstIds.has(d.id))).violations).toEqual([]);
  });

  it('a stalled connection (open but silent) is detected and replaced', async () => {
    await using proxy = await proxyTo(pgHostPort(await pgUrl(15)));
    await using b = await bundle({ kind: 'kafka', pgUrlRewrite: (url) => viaProxy(url, proxy.port) });
    const { relay } = await startDelivering(b, 500, 50);
    proxy.stall();
    const during = await writeOutbox(b.db.client, { total: 500, keys: 50, types: b.types });
    // statusInterval is 1 s in the fault config: silence is declared after 10 s.
    await until(
      'the relay to notice the stall',
      async () => (await relay.metric('outboxd_reconnects_total', { target: 'postgres' }).catch(() => 0)) >= 1,
      30_000,
    );
    proxy.resume();
    await waitDelivered(
      b.reader,
      during.map((r) => r.id),
      60_000,
    );
    expect(relay.stderr).toMatch(/no message from the server for \d+ s; reconnecting/);
  });
});

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`network faults: relay ↔ ${kind}`, () => {
    it('a stalled broker hits the confirm/request timeout instead of hanging, then recovers without loss', async () => {
      await using bp = await brokerProxy(kind);
      const { proxy, relayBroker } = bp;
      // Kafka advertises its own address in metadata, so the proxy only sees the bootstrap
      // connection for Kafka; stalling it still stalls that connection's requests.
      await using b = await bundle({ kind, relayBroker });
      const { relay } = await startDelivering(b, 500, 50);
      proxy.stall();
      const during = await writeOutbox(b.db.client, { total: 500, keys: 50, types: b.types });
      if (kind === 'rabbitmq') {
        await until(
          'a confirm timeout',
          async () => (await relay.metric('outboxd_publish_errors_total', { reason: 'confirm_timeout' })) >= 1,
          30_000,
        );
        expect((await relay.http('/readyz')).status).toBe(503);
      } else {
        // Pacing, not a wait: Kafka's publishes bypass the proxy (advertised address), so there
        // is no timeout to wait for; the stall lasts a few seconds on the bootstrap connection.
        await sleep(3_000);
      }
      proxy.resume();
      proxy.cutAll();
      await waitDelivered(
        b.reader,
        during.map((r) => r.id),
        90_000,
      );
      await relay.ready(60_000);
    });

    it('cut broker connections mid-stream: republishes what was unconfirmed, no id lost', async () => {
      await using bp = await brokerProxy(kind);
      const { proxy, relayBroker } = bp;
      await using b = await bundle({ kind, relayBroker });
      const relay = b.start();
      await relay.ready();
      const writer = writeOutbox(b.db.client, { total: 5_000, keys: 100, types: b.types });
      for (let i = 0; i < 3; i++) {
        await sleep(400); // pacing: the interval between cuts, not a wait for anything
        proxy.cutAll();
      }
      const rows = await writer;
      await waitDelivered(
        b.reader,
        rows.map((r) => r.id),
      );
      expect(orderAndDuplicates(b.reader.delivered()).violations).toEqual([]);
    });
  });
}
