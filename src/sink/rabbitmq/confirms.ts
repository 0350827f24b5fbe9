import type amqp from 'amqplib';
import { SinkError } from '../../errors.js';
import { within } from '../../retry.js';

/** How long a connection may take to close before its socket is dropped. */
export const CLOSE_TIMEOUT_MS = 1_000;

/**
 * Closes a connection, but never waits for it longer than `ms`: a stalled broker (or network)
 * never answers Connection.Close, and a reset that hung on it would stop the relay for good.
 * After `ms` the socket is destroyed instead.
 */
export async function closeWithin(model: amqp.ChannelModel, ms: number): Promise<void> {
  const closed = model.close().catch(() => undefined);
  if (!(await within(closed, ms))) (model as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/**
 * Counts outstanding publisher confirms. Every callback is settled exactly once by amqplib (ack,
 * nack, or channel close); this waits for all of them, remembers the first failure, and gives up
 * after the timeout, since a broker that vanished without closing the socket never answers.
 */
export class ConfirmWaiter {
  private pending = 0;
  private error: Error | null = null;
  private done: (() => void) | null = null;
  private abandoned = false;
  constructor(private readonly timeoutMs: number) {}

  /**
   * The callback for one more publish. The same function every time (the count is the waiter's),
   * so a batch of thousands allocates no closure per message.
   */
  callback(): (err: unknown) => void {
    this.pending++;
    return this.settle;
  }

  private readonly settle = (err: unknown): void => {
    if (err && !this.error)
      this.error = err instanceof Error ? err : new SinkError('nack', 'RabbitMQ nacked a message', { retriable: true });
    this.pending--;
    if (this.pending === 0) this.done?.();
  };

  abandon(): void {
    this.abandoned = true;
  }

  /**
   * Resolves when every confirm arrived. `blockedUntil` reports a broker alarm in force: the
   * broker is holding us on purpose, so the timeout restarts once it lifts instead of firing.
   */
  async wait(blockedUntil: () => Promise<void> | undefined = () => undefined): Promise<void> {
    while (this.pending > 0 && !this.abandoned) {
      const allConfirmed = new Promise<void>((resolve) => (this.done = resolve));
      if (await within(allConfirmed, this.timeoutMs)) break;
      const blocked = blockedUntil();
      if (blocked && this.pending > 0) {
        await Promise.race([blocked, new Promise<void>((resolve) => (this.done = resolve))]);
        continue;
      }
      if (this.pending > 0) {
        throw new SinkError('confirm_timeout', `RabbitMQ did not confirm ${this.pending} message(s) within ${this.timeoutMs} ms`, {
          retriable: true,
        });
      }
    }
    if (this.error) throw this.error;
  }
}
