/**
 * The shapes of kafkajs's Produce requests that produce-encoder.ts writes (docs/adr/0010), and
 * what decides whether it writes one (ours). Kept apart from the encoder, which re-exports them.
 */

export type Value = string | Buffer | null | undefined;

/** The property of a message that carries its encoded record (see KafkaMessage). */
export const RAW = Symbol.for('outboxd.kafka.record');
export interface KafkaMessage {
  key?: Value;
  value: Value;
  headers?: Record<string, Value | Value[]>;
  timestamp?: string | number;
  /**
   * The record already encoded (encodeUnit, on the relay's main thread), with this offset delta
   * in its partition's batch: copied as it is. Only produce-encoder.ts can send such a message.
   */
  [RAW]?: Buffer;
}
export interface PartitionData {
  partition: number;
  firstSequence?: number;
  messages: KafkaMessage[];
}
export interface TopicData {
  topic: string;
  partitions: PartitionData[];
}
export interface LongLike {
  high: number;
  low: number;
}
/** kafkajs's utils/long: a 64-bit integer as a BigInt. */
export interface KafkaLong {
  value: bigint;
}
export interface ProduceArgs {
  acks: number;
  timeout: number;
  transactionalId?: string | null;
  producerId?: KafkaLong | number | string;
  producerEpoch?: number;
  compression?: number;
  topicData: TopicData[];
}
export interface ProduceRequest {
  apiKey: number;
  apiVersion: number;
  apiName: string;
  expectResponse: () => boolean;
  encode: () => Promise<{ buf: Buffer; buffer: Buffer; size(): number }>;
}
export type ProduceFactory = (args: ProduceArgs) => ProduceRequest;

export const PRODUCE_API_KEY = 0;

/** kafkajs's Long (a BigInt in `value`), a number or a string, as two 32-bit halves. */
export function toLong(v: KafkaLong | number | string): LongLike {
  const n = typeof v === 'object' ? v.value : BigInt(v);
  return { high: Number(BigInt.asIntN(32, n >> 32n)), low: Number(BigInt.asIntN(32, n)) };
}

/**
 * What produce-encoder.ts does not write itself: messages with a timestamp. A message whose record is
 * already encoded can go nowhere else: that is an error, never a message sent empty.
 */
export function ours(args: ProduceArgs): boolean {
  let raw = false;
  let other = false;
  for (const t of args.topicData) {
    for (const p of t.partitions) {
      for (const m of p.messages) {
        if (m[RAW] !== undefined) raw = true;
        else if (m.timestamp != null) other = true;
      }
    }
  }
  if (raw && other) throw new TypeError('an encoded record cannot carry a timestamp');
  return !other;
}
