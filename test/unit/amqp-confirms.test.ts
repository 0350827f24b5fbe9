import type amqp from 'amqplib';
import { describe, expect, it, vi } from 'vitest';
import { SinkError } from '../../src/errors.js';
import { ConfirmWaiter, closeWithin } from '../../src/sink/rabbitmq/confirms.js';

/** A ChannelModel whose close() settles when the test says, and whose socket records a destroy. */
function fakeModel(close: () => Promise<void>) {
  const stream = {
    destroyed: false,
    destroy() {
      this.destroyed = true;
    },
  };
  return { model: { close, connection: { stream } } as unknown as amqp.ChannelModel, stream };
}

describe('closeWithin', () => {
  it('leaves the socket alone when the broker answers Connection.Close in time', async () => {
    const { model, stream } = fakeModel(async () => undefined);
    await closeWithin(model, 1_000);
    expect(stream.destroyed).toBe(false);
  });

  it('destroys the socket when the broker never answers Connection.Close', async () => {
    const { model, stream } = fakeModel(() => new Promise<void>(() => undefined));
    await closeWithin(model, 10);
    expect(stream.destroyed).toBe(true);
  });

  it('counts a refused close as an answer', async () => {
    const { model, stream } = fakeModel(() => Promise.reject(new Error('channel ended')));
    await closeWithin(model, 1_000);
    expect(stream.destroyed).toBe(false);
  });
});

describe('ConfirmWaiter', () => {
  it('resolves once every confirm arrived', async () => {
    const w = new ConfirmWaiter(1_000);
    const a = w.callback();
    const b = w.callback();
    const waited = w.wait();
    a(null);
    b(null);
    await expect(waited).resolves.toBeUndefined();
  });

  it('rejects with the first nack', async () => {
    const w = new ConfirmWaiter(1_000);
    const a = w.callback();
    const waited = w.wait();
    a(new Error('nacked'));
    await expect(waited).rejects.toThrow('nacked');
  });

  it('gives up on a broker that never confirms, naming how many are missing', async () => {
    const w = new ConfirmWaiter(10);
    w.callback();
    w.callback();
    const err = await w.wait().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).reason).toBe('confirm_timeout');
    expect((err as SinkError).message).toBe('RabbitMQ did not confirm 2 message(s) within 10 ms');
  });

  it('waits past the timeout while the broker blocks us, then for the confirms', async () => {
    const w = new ConfirmWaiter(10);
    const a = w.callback();
    let unblock: () => void = () => undefined;
    const blocked = new Promise<void>((resolve) => (unblock = resolve));
    let asked = 0;
    const waited = w.wait(() => {
      asked++;
      return asked === 1 ? blocked : undefined;
    });
    // The timeout fired and found the broker blocking us: the wait goes on, it does not throw.
    await vi.waitFor(() => expect(asked).toBe(1));
    unblock();
    a(null);
    await expect(waited).resolves.toBeUndefined();
  });
});
