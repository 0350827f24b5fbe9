import type amqp from 'amqplib';
import { SinkError } from '../../errors.js';

/**
 * The door to amqplib's internals (ADR 0021): the one module that reaches past amqplib's public
 * API, to hand a `basic.publish` outboxd encoded itself (encode.ts) to a ConfirmChannel exactly
 * where amqplib's own `publish()` would put its frames.
 *
 * What amqplib 0.10 does for `ConfirmChannel.publish(…, cb)`, and this does too:
 * 1. `pushConfirmCallback(cb)`: the callback takes the next delivery tag's place;
 * 2. on a closed channel, `sendMessage` is the instance's own function that throws an
 *    IllegalOperationError (channel.js, invalidateSend): called here, it throws the same;
 * 3. the frames are written to the channel's write buffer (`connection.channels[ch].buffer`, an
 *    object-mode PassThrough the connection muxes onto the socket), the connection marks that
 *    it sent something (its heartbeat), and `write()`'s result says whether to wait for `drain`.
 *
 * `channelFrames` checks the shape first: a channel that is not what this was written for gets
 * null, and the sink publishes through amqplib's own `publish()`.
 */

interface Slot {
  readonly buffer: { write(chunk: Buffer): boolean };
}

interface ConnectionInternals {
  frameMax: number;
  sentSinceLastCheck: boolean;
  readonly channels: ReadonlyArray<Slot | undefined>;
}

interface ChannelInternals {
  readonly ch: number;
  readonly connection: ConnectionInternals;
  pushConfirmCallback(cb: (err: unknown) => void): void;
  sendMessage(...args: unknown[]): unknown;
}

/** Where a channel's frames go: its number, and the largest frame its connection carries. */
export interface ChannelFrames {
  readonly channel: number;
  readonly frameMax: number;
  readonly internals: ChannelInternals;
}

/** The channel's frames, or null when its internals are not the shape this door knows. */
export function channelFrames(ch: amqp.ConfirmChannel): ChannelFrames | null {
  const c = ch as unknown as Partial<ChannelInternals>;
  const conn = c.connection;
  if (typeof c.ch !== 'number' || typeof c.pushConfirmCallback !== 'function' || typeof c.sendMessage !== 'function') return null;
  if (Object.hasOwn(c, 'sendMessage')) return null; // closed already
  if (!conn || typeof conn.frameMax !== 'number' || conn.frameMax <= 8 || !Array.isArray(conn.channels)) return null;
  if (typeof conn.channels[c.ch]?.buffer?.write !== 'function') return null;
  return { channel: c.ch, frameMax: conn.frameMax, internals: c as ChannelInternals };
}

/**
 * Sends a publish's frames on the channel, with `cb` for its confirm; false when the channel's
 * buffer is full (wait for `drain`), as `publish()` says. Throws as amqplib does on a closed
 * channel.
 */
export function sendEncoded(frames: ChannelFrames, encoded: Buffer, cb: (err: unknown) => void): boolean {
  const ch = frames.internals;
  ch.pushConfirmCallback(cb);
  if (Object.hasOwn(ch, 'sendMessage')) ch.sendMessage();
  const slot = ch.connection.channels[ch.ch];
  if (slot === undefined) throw new SinkError('channel_closed', `RabbitMQ channel ${ch.ch} is closed`, { retriable: true });
  ch.connection.sentSinceLastCheck = true;
  return slot.buffer.write(encoded);
}
