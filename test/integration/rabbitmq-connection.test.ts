import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { isListening } from '../harness/ports.js';
import { startRabbitMQ } from '../harness/rabbitmq.js';
import { RelayProcess, rabbitmqConfig, TestDb, until, writeConfig } from './support.js';
import { pgUrl, rabbitmqUrl } from '../harness/services.js';

/**
 * RabbitMQ connection life: a missing exchange, a vhost, and broker resource alarms
 * (connection.blocked) against real nodes.
 */
/** A database and a relay for it publishing to `exchange`; `await using` cleans up. */
async function relayFor(amqpUrl: string, exchange: string, declare: boolean) {
  const stack = new AsyncDisposableStack();
  const db = stack.use(await new TestDb(await pgUrl(15)).create());
  const cfg = await writeConfig(
    rabbitmqConfig(
      db,
      `    url: ${amqpUrl}
    exchange: ${exchange}
    declare: ${declare}
    confirmTimeout: 5s
`,
    ),
  );
  stack.use(cfg);
  const relay = stack.use(new RelayProcess(cfg.file, cfg.port));
  return { db, relay, [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

/** The message ids arriving through `exchange`; `await using` closes the connection. */
async function consumer(url: string, exchange: string) {
  const model = await amqp.connect(url);
  model.on('error', () => undefined);
  const ch = await model.createChannel();
  ch.on('error', () => undefined);
  await ch.assertExchange(exchange, 'topic', { durable: true });
  const q = `q_${randomUUID().slice(0, 8)}`;
  await ch.assertQueue(q, { durable: true });
  await ch.bindQueue(q, exchange, '#');
  const ids: string[] = [];
  await ch.consume(q, (m) => {
    if (!m) return;
    ids.push(String(m.properties.messageId));
    ch.ack(m);
  });
  return { ids, [Symbol.asyncDispose]: () => model.close().catch(() => undefined) };
}

describe('RabbitMQ connection life', () => {
  it('a missing exchange with declare: false stops the relay with a clear one-line error', async () => {
    await using r = await relayFor(await rabbitmqUrl(), `missing_${randomUUID().slice(0, 8)}`, false);
    const { relay } = r;
    expect(await relay.exited).toBe(1);
    const fatal = relay.logLines().find((l) => l.level === 'fatal');
    expect(String(fatal?.msg)).toMatch(/RabbitMQ exchange "missing_\w+" does not exist; create it or set sink\.rabbitmq\.declare: true/);
  });

  it('refused credentials stop the relay with a one-line error naming them', async () => {
    const url = (await rabbitmqUrl()).replace(/:\/\/([^:]+):[^@]+@/, '://$1:not-the-password@');
    await using r = await relayFor(url, `x_${randomUUID().slice(0, 8)}`, true);
    const { relay } = r;
    expect(await relay.exited).toBe(1);
    const fatal = relay.logLines().find((l) => l.level === 'fatal');
    expect(String(fatal?.msg)).toMatch(/ACCESS_REFUSED.*\(check the credentials and vhost permissions\)$/);
    expect(String(fatal?.msg)).not.toContain('\n');
  });

  it('a vhost that does not exist keeps the relay unready, with a warning naming it', async () => {
    const url = (await rabbitmqUrl()).replace(/\/%2F$/, '/no_such_vhost');
    await using r = await relayFor(url, `x_${randomUUID().slice(0, 8)}`, true);
    const { relay } = r;
    await until('the warning', async () => relay.logLines().find((l) => l.level === 'warn'), 20_000);
    const warn = relay.logLines().find((l) => l.level === 'warn');
    expect(String(warn?.msg)).toBe('rabbitmq unavailable, retrying');
    expect(String((warn?.err as { message?: string })?.message)).toMatch(/refused to open vhost "no_such_vhost": it does not exist/);
    expect((await relay.http('/readyz')).status).toBe(503);
    expect(relay.child.exitCode).toBeNull();
  });

  it('an unreachable broker is retried, whatever digits its address holds', async () => {
    // A refused connection once read as ACCESS_REFUSED when the port held "403" (the reply code).
    let port = 0;
    for (let p = 40300; p < 40400 && port === 0; p++) if (!(await isListening('127.0.0.1', p))) port = p;
    expect(port).toBeGreaterThan(0);
    await using r = await relayFor(`amqp://outboxd:secret@127.0.0.1:${port}/%2F`, 'x', true);
    const { relay } = r;
    // The refusal was classified retriable: a retry is scheduled and /readyz says why (the old
    // misreading exited before that).
    await until('a retry', async () => /rabbitmq unavailable, retrying/.test(relay.stderr), 20_000);
    await until('the refusal in /readyz', async () => (await relay.http('/readyz')).body.includes('ECONNREFUSED'), 20_000);
    expect(relay.child.exitCode).toBeNull();
    expect((await relay.http('/readyz')).status).toBe(503);
    expect(relay.stderr).toContain(`ECONNREFUSED 127.0.0.1:${port}`);
  });

  it('publishes into a vhost named by the URL path', async () => {
    const vhostUrl = (await rabbitmqUrl()).replace(/\/%2F$/, '/outboxd_test');
    const exchange = `vh_${randomUUID().slice(0, 8)}`;
    await using c = await consumer(vhostUrl, exchange);
    const { ids } = c;
    await using r = await relayFor(vhostUrl, exchange, false);
    const { db, relay } = r;
    await relay.ready();
    const id = randomUUID();
    await db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'a', 'k', 'T', '{}')`, [
      id,
    ]);
    await until('the message in the vhost', async () => ids.includes(id), 30_000);
  });

  it('a memory alarm (connection.blocked) pauses publishing, flips /readyz and the metric; unblocked resumes', async () => {
    await using rabbit = await startRabbitMQ();
    const exchange = `bl_${randomUUID().slice(0, 8)}`;
    await using c = await consumer(rabbit.url, exchange);
    const { ids } = c;
    await using r = await relayFor(rabbit.url, exchange, true);
    const { db, relay } = r;
    await relay.ready();
    await rabbit.ctl('set_vm_memory_high_watermark', '0.000001');
    const id = randomUUID();
    await db.client.query(`INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'a', 'k', 'T', '{}')`, [
      id,
    ]);
    await until('blocked', async () => (await relay.metric('outboxd_broker_blocked')) === 1, 30_000);
    expect((await relay.http('/readyz')).body).toMatch(/blocked the connection/);
    expect(relay.stderr).toMatch(/RabbitMQ blocked the connection/);
    // The row is read and held in flight: published it is not.
    await until('the row in flight', async () => (await relay.metric('outboxd_inflight_messages')) >= 1, 30_000);
    expect(ids).not.toContain(id);
    await rabbit.ctl('set_vm_memory_high_watermark', '0.4');
    await until('the message after unblock', async () => ids.includes(id), 60_000);
    await until('unblocked', async () => (await relay.metric('outboxd_broker_blocked')) === 0, 10_000);
    await relay.ready(30_000);
  });
});
