import { EventEmitter } from 'node:events';
import { describe, expect, it, vi } from 'vitest';
import type { RabbitMqSinkConfig } from '../../src/config/config.js';
import { SinkError } from '../../src/errors.js';
import { testMessage } from './messages.js';

/**
 * RabbitMqSink over several channels, against fake amqplib channels whose confirms the test
 * answers: a key keeps its channel, in batch order; a batch resolves only once every channel
 * confirmed its part; one channel's nack fails the whole batch.
 */
class FakeChannel extends EventEmitter {
  readonly sent: Array<{ id: string; key: string; confirm: (err: unknown) => void }> = [];
  publish(
    _exchange: string,
    _rk: string,
    _body: Buffer,
    props: { messageId: string; headers: { aggregateid: string } },
    cb: (err: unknown) => void,
  ) {
    this.sent.push({ id: props.messageId, key: props.headers.aggregateid, confirm: cb });
    return true;
  }
  confirmAll(err: unknown = null): void {
    for (const s of this.sent.splice(0)) s.confirm(err);
  }
}

const channels: FakeChannel[] = [];

vi.mock('../../src/sink/rabbitmq/connection.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/sink/rabbitmq/connection.js')>();
  return {
    ...real,
    checkExchange: async () => undefined,
    connectAmqp: async () => {
      const model = new EventEmitter() as EventEmitter & { createConfirmChannel(): Promise<FakeChannel>; close(): Promise<void> };
      model.createConfirmChannel = async () => {
        const ch = new FakeChannel();
        channels.push(ch);
        return ch;
      };
      model.close = async () => undefined;
      return model;
    },
  };
});

const { RabbitMqSink } = await import('../../src/sink/rabbitmq/sink.js');
const { laneOf } = await import('../../src/sink/rabbitmq/connection.js');

function sinkWith(n: number) {
  channels.length = 0;
  const cfg = { exchange: 'ex', channels: n, confirmTimeoutMs: 5_000, maxMessageBytes: 1 << 20 } as unknown as RabbitMqSinkConfig;
  const log = { debug() {}, info() {}, warn() {}, error() {} } as never;
  const status = { connection() {}, blocked() {}, transaction() {}, fenced() {} };
  return new RabbitMqSink(cfg, false, log, status);
}

const msg = (i: number, key: string) => testMessage(i, key);

const batch = Array.from({ length: 600 }, (_, i) => msg(i, `k${i % 37}`));

describe('RabbitMqSink over several channels', () => {
  it('sends each key over one channel, in batch order', async () => {
    const sink = sinkWith(4);
    const done = sink.publish(batch);
    await vi.waitFor(() => expect(channels.reduce((n, c) => n + c.sent.length, 0)).toBe(600));
    expect(channels).toHaveLength(4);
    for (const [lane, ch] of channels.entries()) {
      expect(ch.sent.length).toBeGreaterThan(0);
      for (const s of ch.sent) expect(laneOf(s.key, 4)).toBe(lane);
      const seq = ch.sent.map((s) => Number(s.id.slice(1)));
      expect(seq).toEqual([...seq].sort((a, b) => a - b));
    }
    for (const ch of channels) ch.confirmAll();
    await expect(done).resolves.toEqual({ poisoned: [] });
  });

  it('resolves only when every channel confirmed its part', async () => {
    const sink = sinkWith(4);
    let settled = false;
    const done = sink.publish(batch).finally(() => {
      settled = true;
    });
    await vi.waitFor(() => expect(channels.reduce((n, c) => n + c.sent.length, 0)).toBe(600));
    for (const ch of channels.slice(0, 3)) ch.confirmAll();
    await new Promise((r) => setTimeout(r, 20));
    expect(settled).toBe(false);
    channels[3]?.confirmAll();
    await done;
    expect(settled).toBe(true);
  });

  it("fails the whole batch on one channel's nack", async () => {
    const sink = sinkWith(4);
    const done = sink.publish(batch);
    await vi.waitFor(() => expect(channels.reduce((n, c) => n + c.sent.length, 0)).toBe(600));
    channels[0]?.confirmAll();
    channels[1]?.confirmAll(new Error('nack'));
    channels[2]?.confirmAll();
    channels[3]?.confirmAll();
    const err = await done.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).retriable).toBe(true);
  });

  it("counts a channel's return after a sibling channel closed: the unroutable message is poison, not confirmed", async () => {
    const sink = sinkWith(2);
    const done = sink.publish(batch);
    await vi.waitFor(() => expect(channels.reduce((n, c) => n + c.sent.length, 0)).toBe(600));
    const [first, second] = channels as [FakeChannel, FakeChannel];
    first.confirmAll();
    first.emit('close');
    const lost = second.sent[0]?.id as string;
    second.emit('return', { properties: { messageId: lost } });
    second.confirmAll();
    const { poisoned } = await done;
    expect(poisoned.map((p) => [batch[p.index]?.id, p.error.reason])).toEqual([[lost, 'unroutable']]);
  });

  it('two batches out at once: a return of the later one, come before the earlier one confirmed, stays with the later one', async () => {
    const sink = sinkWith(1);
    const a = Array.from({ length: 10 }, (_, i) => msg(i, `a${i}`));
    const b = Array.from({ length: 10 }, (_, i) => msg(10 + i, `b${i}`));
    const doneA = sink.publish(a);
    const doneB = sink.publish(b);
    const ch = await vi.waitFor(() => {
      const c = channels[0] as FakeChannel;
      expect(c.sent).toHaveLength(20);
      return c;
    });
    ch.emit('return', { properties: { messageId: 'm12' } });
    for (const s of ch.sent.splice(0, 10)) s.confirm(null);
    await expect(doneA).resolves.toEqual({ poisoned: [] });
    ch.confirmAll();
    const { poisoned } = await doneB;
    expect(poisoned.map((p) => [b[p.index]?.id, p.error.reason])).toEqual([['m12', 'unroutable']]);
  });

  it('spreads keys over every channel', () => {
    const hits = new Set(Array.from({ length: 100 }, (_, i) => laneOf(`order-${i}`, 4)));
    expect(hits).toEqual(new Set([0, 1, 2, 3]));
    expect(laneOf('anything', 1)).toBe(0);
  });
});
