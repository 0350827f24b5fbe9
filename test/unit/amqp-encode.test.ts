import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import type { OutboxMessage } from '../../src/interfaces.js';
import { channelFrames, sendEncoded } from '../../src/sink/rabbitmq/amqplib-internals.js';
import { encodePublish } from '../../src/sink/rabbitmq/encode.js';
import { amqpLimitProblem, surelyWithinLimits } from '../../src/sink/rabbitmq/limits.js';
import { properties } from '../../src/sink/rabbitmq/sink.js';

/**
 * outboxd's own basic.publish frames (encode.ts) against amqplib's: for every message, the bytes
 * amqplib 0.10's Connection.sendMessage would write for `publish(exchange, routingKey, body,
 * properties(m))` on the same channel and frame size, and null exactly where amqplib would not
 * write the same (so the sink hands those to amqplib).
 */
const require = createRequire(import.meta.url);
const { Connection } = require('amqplib/lib/connection.js') as { Connection: { prototype: { sendMessage: (...a: unknown[]) => boolean } } };
const defs = require('amqplib/lib/defs.js') as { BasicPublish: number; BasicProperties: number };
const Args = require('amqplib/lib/api_args.js') as { publish(exchange: string, rk: string, options: object): object };

/** What amqplib writes to channel `channel`'s buffer for this publish, concatenated. */
function amqplibBytes(channel: number, frameMax: number, exchange: string, m: OutboxMessage): Buffer {
  const chunks: Buffer[] = [];
  const fake = {
    frameMax,
    sentSinceLastCheck: false,
    channels: { [channel]: { buffer: { write: (b: Buffer) => chunks.push(Buffer.from(b)) > 0 } } },
    sendContent: (Connection.prototype as unknown as { sendContent: unknown }).sendContent,
  };
  const fields = Args.publish(exchange, m.destination, properties(m));
  const body = typeof m.payload === 'string' ? Buffer.from(m.payload) : m.payload;
  Connection.prototype.sendMessage.call(fake, channel, defs.BasicPublish, fields, defs.BasicProperties, fields, body);
  return Buffer.concat(chunks);
}

function message(over: Partial<OutboxMessage> = {}): OutboxMessage {
  return {
    id: '0b8e3a52-5d2c-4b7e-9a3f-2f1d6c7e8a90',
    destination: 'outbox.order.created',
    key: 'order-42',
    aggregateType: 'order',
    type: 'created',
    payload: '{"amount":"12.50","note":"ünïcödé ✓"}',
    contentType: 'application/json',
    headers: { id: '0b8e3a52', type: 'created', traceparent: '00-abc-def-01', 'outboxd.lsn': '0/16B3748' },
    correlationId: 'corr-1',
    replyTo: 'replies',
    txn: { xid: 7, commitLsn: 0n, commitTimeMs: 1_765_000_000_123, lsnText: '0/16B3748', xidText: '7' } as never,
    index: 0,
    sizeBytes: 100,
    ...over,
  };
}

const long = (n: number, c = 'x') => c.repeat(n);

const CASES: Array<[string, Partial<OutboxMessage>]> = [
  ['a typical JSON event', {}],
  ['no correlation id, reply-to or type', { correlationId: null, replyTo: null, type: null }],
  ['an empty body', { payload: '' }],
  ['a bytea body', { payload: Buffer.from([0, 1, 2, 255, 254, 0]) }],
  ['an empty bytea body', { payload: Buffer.alloc(0) }],
  ['a body over 2 KiB (amqplib writes it in pieces)', { payload: long(5000, 'é') }],
  ['a body over one frame', { payload: long(300_000, 'a') }],
  ['a bytea body over several frames', { payload: Buffer.alloc(400_000, 7) }],
  ['no headers of its own', { headers: {} }],
  ['aggregatetype and aggregateid among its headers', { headers: { aggregateid: 'stale', a: '1', aggregatetype: 'stale' } }],
  ['integer-like header names (sorted first by JavaScript)', { headers: { b: '1', '2': 'two', '1': 'one' } }],
  ['a header with an empty value', { headers: { empty: '' } }],
  ['255-byte short strings', { destination: long(255), id: long(255), correlationId: long(85, '€'), type: long(255) }],
  ['a commit before 2^32 seconds and one after', { txn: { commitTimeMs: 5_000_000_000_000 } as never }],
  ['a commit at the epoch', { txn: { commitTimeMs: 999 } as never }],
  ['lone surrogates', { payload: 'a\ud800b', key: '\udc00', headers: { 'x\ud800': 'y\udfff' } }],
  ['a header table near 64 KiB', { headers: { big: long(65_000) } }],
];

describe('encodePublish', () => {
  it.each(CASES)('writes what amqplib writes: %s', (_, over) => {
    const m = message(over);
    for (const [channel, frameMax] of [
      [1, 131_072],
      [7, 4_096],
      [65_535, 131_072],
    ] as const) {
      const ours = encodePublish(channel, frameMax, 'outbox', m.destination, m);
      expect(ours).not.toBeNull();
      expect((ours as Buffer).equals(amqplibBytes(channel, frameMax, 'outbox', m))).toBe(true);
    }
  });

  it.each([
    ['a routing key over 255 bytes', { destination: long(256) }],
    ['a message id over 255 bytes in UTF-8', { id: long(128, 'é') }],
    ['a correlation id over 255 bytes', { correlationId: long(256) }],
    ['a header name over 255 bytes', { headers: { [long(256)]: 'v' } }],
    ['a header table over 64 KiB', { headers: { big: long(70_000) } }],
    ['a header value that is not a string', { headers: { n: 5 as unknown as string } }],
    ['a commit before 1970', { txn: { commitTimeMs: -5000 } as never }],
    ['headers larger than its scratch space', { headers: { a: long(90_000, '€') } }],
  ] as Array<[string, Partial<OutboxMessage>]>)('leaves to amqplib what it would not write the same: %s', (_, over) => {
    expect(encodePublish(1, 131_072, 'outbox', over.destination ?? 'rk', message(over))).toBeNull();
  });
});

describe('the amqplib door', () => {
  it('refuses a channel that is not the shape it knows, and a closed one', () => {
    expect(channelFrames({} as never)).toBeNull();
    const buffer = { write: () => true };
    const ch = {
      ch: 1,
      connection: { frameMax: 131_072, sentSinceLastCheck: false, channels: [undefined, { buffer }] },
      pushConfirmCallback() {},
    };
    Object.setPrototypeOf(ch, { sendMessage() {} });
    expect(channelFrames(ch as never)).toMatchObject({ channel: 1, frameMax: 131_072 });
    Object.assign(ch, {
      sendMessage() {
        throw new Error('Channel closed');
      },
    });
    expect(channelFrames(ch as never)).toBeNull();
  });

  it('queues the confirm first, then writes the frames and says whether to wait', () => {
    const order: string[] = [];
    const buffer = {
      write: (b: Buffer) => {
        order.push(`write ${b.length}`);
        return false;
      },
    };
    const connection = { frameMax: 131_072, sentSinceLastCheck: false, channels: [undefined, undefined, { buffer }] };
    const ch = { ch: 2, connection, pushConfirmCallback: () => order.push('confirm') };
    Object.setPrototypeOf(ch, { sendMessage() {} });
    const frames = channelFrames(ch as never);
    expect(frames).not.toBeNull();
    expect(sendEncoded(frames as never, Buffer.alloc(10), () => undefined)).toBe(false);
    expect(order).toEqual(['confirm', 'write 10']);
    expect(connection.sentSinceLastCheck).toBe(true);
    // Closed since: throws as amqplib's publish does.
    Object.assign(ch, {
      sendMessage() {
        throw new Error('Channel closed');
      },
    });
    expect(() => sendEncoded(frames as never, Buffer.alloc(10), () => undefined)).toThrow('Channel closed');
  });
});

describe('surelyWithinLimits', () => {
  it('passes a typical message without a closer look', () => {
    expect(surelyWithinLimits(message())).toBe(true);
  });

  it('never passes a message the full check refuses', () => {
    const fields = ['destination', 'id', 'correlationId', 'replyTo', 'type', 'contentType'] as const;
    let passed = 0;
    for (const field of fields) {
      for (const n of [1, 84, 85, 86, 127, 128, 255, 256]) {
        for (const c of ['x', 'é', '€', '😀']) {
          const m = message({ [field]: c.repeat(n) });
          if (surelyWithinLimits(m)) {
            passed++;
            expect(amqpLimitProblem(m.destination, properties(m))).toBeNull();
          }
        }
      }
    }
    for (const [k, v] of [
      [long(85), 'v'],
      [long(86), 'v'],
      [long(256), 'v'],
      ['big', long(21_000, '€')],
      ['big', long(21_900, '€')],
      ['big', long(65_600)],
    ] as const) {
      const m = message({ headers: { [k]: v } });
      if (surelyWithinLimits(m)) {
        passed++;
        expect(amqpLimitProblem(m.destination, properties(m))).toBeNull();
      } else expect(k.length > 85 || v.length * 3 > 60_000).toBe(true);
    }
    expect(passed).toBeGreaterThan(20);
    expect(surelyWithinLimits(message({ destination: long(256) }))).toBe(false);
    expect(surelyWithinLimits(message({ headers: { big: long(70_000) } }))).toBe(false);
  });
});
