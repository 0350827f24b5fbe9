import { randomUUID } from 'node:crypto';
import { Consumer, MessagesStreamModes, stringDeserializers } from '@platformatic/kafka';
import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { pgUrl, kafkaBrokers, rabbitmqUrl } from '../harness/services.js';
import { RelayProcess, TestDb, TopicReader, kafkaConfig, until, writeConfig } from './support.js';

/**
 * A header named `__proto__` (or `constructor`) in the headers column reaches the consumer under
 * that name with its value, through the real relay and a real broker.
 *
 * The readers are chosen to see such a header at all: kafkajs's consumer folds headers into an
 * object with `{ ...obj, [key]: obj[key] === undefined ? … }` (so `__proto__` comes back as
 * `[Object.prototype, value]`), and amqplib's decodes a header table with `fields[key] = val`
 * (so `__proto__` is dropped on the way in). @platformatic/kafka hands header pairs over as an
 * array; on RabbitMQ the broker itself shows what it received: a headers exchange routes on
 * `__proto__ = x`.
 */

const HEADERS = '{"__proto__": "x", "constructor": "y", "a": "b"}';

async function insert(db: TestDb, aggregatetype: string): Promise<string> {
  const id = randomUUID();
  await db.client.query(
    `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, headers) VALUES ($1, $2, 'k-1', 'Placed', '{"n": 1}', $3)`,
    [id, aggregatetype, HEADERS],
  );
  return id;
}

describe('a header named __proto__ from the headers column', () => {
  it('arrives on Kafka under its name with its value', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    const brokers = await kafkaBrokers();
    const type = `proto_${db.name.slice(2, 8)}`;
    const topic = `outbox.event.${type}`;
    await using admin = new TopicReader(brokers);
    await admin.createTopics([topic], 1);
    await using cfg = await writeConfig(kafkaConfig({ pgUrl: db.url, slot: db.slot, brokers }));
    await using relay = new RelayProcess(cfg.file, cfg.port);
    await relay.ready();
    const id = await insert(db, type);

    const consumer = new Consumer({
      clientId: 'outboxd-test-header-names',
      bootstrapBrokers: brokers,
      groupId: `header-names-${randomUUID()}`,
      deserializers: stringDeserializers,
      maxWaitTime: 100,
    });
    await using _closeConsumer = { [Symbol.asyncDispose]: () => consumer.close(true) };
    const stream = await consumer.consume({ topics: [topic], mode: MessagesStreamModes.EARLIEST, autocommit: false });
    const got: Array<Array<[string, string]>> = [];
    stream.on('data', (m) => got.push(m.headerEntries));
    await until('the message on Kafka', async () => got.length > 0, 60_000, 100);

    const headers = got[0] as Array<[string, string]>;
    expect(headers).toContainEqual(['__proto__', 'x']);
    expect(headers).toContainEqual(['constructor', 'y']);
    expect(headers).toContainEqual(['a', 'b']);
    expect(headers).toContainEqual(['id', id]);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('arrives on RabbitMQ under its name with its value', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    const url = await rabbitmqUrl();
    const tag = db.name.slice(2, 10);
    const exchange = `ex_${tag}`;
    const model = await amqp.connect(url);
    await using _closeModel = { [Symbol.asyncDispose]: () => model.close().catch(() => undefined) };
    const ch = await model.createChannel();
    await ch.assertExchange(exchange, 'topic', { durable: true });
    // The broker routes on the header: a headers exchange behind the relay's exchange.
    await ch.assertExchange(`hx_${tag}`, 'headers', { durable: false, autoDelete: true });
    await ch.bindExchange(`hx_${tag}`, exchange, '#');
    // A computed __proto__ key defines an own property: amqplib writes it into the binding's arguments.
    const match = (value: string) => ({ 'x-match': 'all', ['__proto__']: value, constructor: 'y' });
    for (const [queue, args] of [
      [`q_x_${tag}`, match('x')],
      [`q_other_${tag}`, match('not-x')],
    ] as const) {
      expect(Object.keys(args)).toContain('__proto__');
      await ch.assertQueue(queue, { exclusive: true });
      await ch.bindQueue(queue, `hx_${tag}`, '', args);
    }
    await ch.assertQueue(`q_all_${tag}`, { exclusive: true });
    await ch.bindQueue(`q_all_${tag}`, exchange, '#');

    await using cfg = await writeConfig(
      (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
  statusInterval: 1s
outbox:
  tables:
    - name: public.outbox
sink:
  type: rabbitmq
  rabbitmq:
    url: ${url}
    exchange: ${exchange}
    declare: true
http:
  host: 127.0.0.1
  port: ${port}
`,
    );
    await using relay = new RelayProcess(cfg.file, cfg.port);
    await relay.ready();
    const id = await insert(db, 'order');

    let routed: amqp.GetMessage | false = false;
    await until(
      'the message routed on header __proto__ = x',
      async () => {
        routed = await ch.get(`q_x_${tag}`, { noAck: true });
        return routed !== false;
      },
      30_000,
      100,
    );
    expect((routed as unknown as amqp.GetMessage).properties.messageId).toBe(id);
    // Routing is done once per publish, for every queue: the one that asked for another value got nothing.
    expect((await ch.checkQueue(`q_other_${tag}`)).messageCount).toBe(0);
    const all = await ch.get(`q_all_${tag}`, { noAck: true });
    expect(all === false ? null : all.properties.headers).toMatchObject({ constructor: 'y', a: 'b', id });
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });
});
