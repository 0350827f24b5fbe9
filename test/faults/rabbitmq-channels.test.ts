import { describe, expect, it } from 'vitest';
import { sleep, until, writeOutbox } from '../integration/support.js';
import { bundle, orderAndDuplicates, waitDelivered } from './fixtures.js';
import { TcpProxy } from './proxy.js';
import { rabbitmqUrl } from '../harness/services.js';

/**
 * sink.rabbitmq.channels > 1 against the real node: a key keeps its channel (per-key order in
 * the one queue all channels feed), nothing is lost when the connection and every channel on it
 * drop mid-batch, and the slot never passes a batch whose confirms have not all come back.
 */
const CHANNELS = '    channels: 4\n';

/** The shared node behind a TCP proxy; the relay's URL goes through it. */
async function viaProxy(): Promise<{ proxy: TcpProxy; url: string } & AsyncDisposable> {
  const direct = new URL((await rabbitmqUrl()).replace(/^amqp/, 'http'));
  const proxy = new TcpProxy(direct.hostname, Number(direct.port));
  await proxy.start();
  direct.port = String(proxy.port);
  return { proxy, url: direct.toString().replace(/^http/, 'amqp'), [Symbol.asyncDispose]: () => proxy.close() };
}

describe('RabbitMQ over 4 channels', () => {
  it('keeps per-key order in one queue fed by every channel, each id once', async () => {
    await using b = await bundle({ kind: 'rabbitmq', sinkExtra: CHANNELS });
    const relay = b.start();
    await relay.ready();
    const rows = await writeOutbox(b.db.client, { total: 8_000, keys: 200, types: b.types });
    await waitDelivered(
      b.reader,
      rows.map((r) => r.id),
    );
    await until('nothing in flight', async () => (await relay.metric('outboxd_inflight_messages')) === 0, 30_000);
    await b.reader.caughtUp();
    expect(orderAndDuplicates(b.reader.delivered())).toMatchObject({ violations: [], duplicates: 0 });
  });

  it('cut connections mid-batch: republishes what any channel left unconfirmed, no id lost, order kept', async () => {
    await using p = await viaProxy();
    await using b = await bundle({ kind: 'rabbitmq', relayBroker: p.url, sinkExtra: CHANNELS });
    const relay = b.start();
    await relay.ready();
    const writer = writeOutbox(b.db.client, { total: 6_000, keys: 100, types: b.types });
    for (let i = 0; i < 3; i++) {
      await sleep(400); // pacing: the interval between cuts, not a wait for anything
      p.proxy.cutAll();
    }
    const rows = await writer;
    await waitDelivered(
      b.reader,
      rows.map((r) => r.id),
    );
    expect(p.proxy.connections).toBeGreaterThan(1);
    expect(orderAndDuplicates(b.reader.delivered()).violations).toEqual([]);
  });

  it('the slot does not pass a batch until every channel confirmed it', async () => {
    await using p = await viaProxy();
    await using b = await bundle({ kind: 'rabbitmq', relayBroker: p.url, sinkExtra: CHANNELS, brokerTimeout: '2s' });
    const relay = b.start();
    await relay.ready();
    const first = await writeOutbox(b.db.client, { total: 400, keys: 40, types: b.types });
    await waitDelivered(
      b.reader,
      first.map((r) => r.id),
    );
    await until('nothing in flight', async () => (await relay.metric('outboxd_inflight_messages')) === 0, 30_000);
    // The broker goes silent: publishes may reach it, but no confirm comes back.
    const before = await b.db.walLsn();
    p.proxy.stall();
    const during = await writeOutbox(b.db.client, { total: 400, keys: 40, types: b.types });
    await until(
      'a confirm timeout',
      async () => (await relay.metric('outboxd_publish_errors_total', { reason: 'confirm_timeout' })) >= 1,
      30_000,
    );
    await relay.heartbeatsPass(2);
    expect((await b.db.slotInfo())?.confirmed).toBeLessThanOrEqual(before);
    p.proxy.resume();
    p.proxy.cutAll();
    await waitDelivered(
      b.reader,
      during.map((r) => r.id),
    );
    const after = await b.db.walLsn();
    await until('the slot moves once every channel confirmed', async () => ((await b.db.slotInfo())?.confirmed ?? 0n) >= after, 30_000);
    // Each writeOutbox numbers its keys from 1: check the order within each write.
    const ids = new Set(during.map((r) => r.id));
    const got = b.reader.delivered();
    expect(orderAndDuplicates(got.filter((d) => ids.has(d.id))).violations).toEqual([]);
    expect(orderAndDuplicates(got.filter((d) => !ids.has(d.id))).violations).toEqual([]);
  });
});
