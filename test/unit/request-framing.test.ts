import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { installKafkajs } from '../../src/sink/kafka/kafkajs-internals.js';
import { type ProduceArgs, encodeProduce } from '../../src/sink/kafka/produce-encoder.js';
import { type EncodedRequest, HEADROOM, frameRequest } from '../../src/sink/kafka/request-framing.js';

/**
 * request-framing.ts writes the bytes kafkajs's own framing (kafkajs/src/protocol/request.js)
 * writes, for kafkajs's Encoders and for encodeProduce's bodies with room in front, with every
 * client id; and installKafkajs puts it where kafkajs's connection requires it.
 */

const require = createRequire(import.meta.url);
const Encoder = require('kafkajs/src/protocol/encoder.js') as new () => {
  writeInt32(v: number): unknown;
  writeString(v: string | null): unknown;
  buf: Buffer;
  buffer: Buffer;
  size(): number;
};
/** kafkajs's framing, loaded from its source (the cached module is ours once the door ran). */
const path = require.resolve('kafkajs/src/protocol/request.js');
const source = readFileSync(path, 'utf8');
const theirFraming = new Function('require', 'module', `${source}; return module.exports;`)(
  (p: string) => require(p === './encoder' ? 'kafkajs/src/protocol/encoder.js' : p),
  { exports: {} },
) as (args: unknown) => Promise<{ buffer: Buffer }>;

function kafkajsBody(): EncodedRequest {
  const e = new Encoder();
  e.writeInt32(7);
  e.writeString('topic-ä');
  e.writeString(null);
  return e as unknown as EncodedRequest;
}

const produce: ProduceArgs = {
  acks: -1,
  timeout: 30_000,
  transactionalId: 'outboxd-orders_1_of_3',
  producerId: 4242 as unknown as ProduceArgs['producerId'],
  producerEpoch: 3,
  compression: 0,
  topicData: [
    {
      topic: 'outbox.event.order',
      partitions: [{ partition: 0, firstSequence: 5, messages: [{ key: 'k', value: '{"a":1}', headers: { id: 'x' } }] }],
    },
  ],
} as unknown as ProduceArgs;

function produceBody(): EncodedRequest {
  const buf = encodeProduce(produce, HEADROOM);
  const buffer = buf.subarray(HEADROOM);
  return { buf, buffer, size: () => buffer.length, headroom: HEADROOM };
}

describe("outboxd's request framing", () => {
  for (const clientId of ['outboxd', '', null, 'ünïcode-client', 'x'.repeat(80)]) {
    it(`writes kafkajs's bytes for client id ${JSON.stringify(clientId)}, for an Encoder and for a Produce body`, async () => {
      for (const make of [kafkajsBody, produceBody]) {
        // One body for both (a Produce body carries the time it was encoded); theirs reads it first.
        const body = make();
        const args = { correlationId: 1234567, clientId, request: { apiKey: 0, apiVersion: 3, encode: () => body } };
        const want = await theirFraming(args);
        const ours = await frameRequest(args);
        expect(ours.buffer.equals(want.buffer)).toBe(true);
        expect(ours.size()).toBe(want.buffer.length);
      }
    });
  }

  it('writes the header in place in front of a Produce body: no copy of the body', async () => {
    const body = produceBody();
    const framed = await frameRequest({ correlationId: 1, clientId: 'outboxd', request: { apiKey: 0, apiVersion: 3, encode: () => body } });
    expect(framed.buffer.buffer).toBe(body.buf.buffer);
    expect(framed.buffer.byteOffset).toBe(body.buf.byteOffset + HEADROOM - 14 - 'outboxd'.length);
  });

  it("is what kafkajs's connection frames its requests with, once the door is installed", () => {
    installKafkajs();
    expect(require('kafkajs/src/protocol/request.js')).toBe(frameRequest);
  });
});
