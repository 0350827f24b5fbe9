import { codecById } from './codecs.js';
import { crc32c } from './crc32c.js';
import { type KafkaMessage, type LongLike, type PartitionData, type ProduceArgs, RAW, type Value, toLong } from './produce-types.js';

export { PRODUCE_API_KEY, type ProduceArgs, type ProduceFactory, type ProduceRequest, RAW, ours } from './produce-types.js';

/**
 * A faster encoder for kafkajs's Produce requests (docs/adr/0010).
 *
 * kafkajs builds each record, header and batch in an `Encoder` of its own that grows by copying,
 * and allocates a Buffer per field: on a 1M-row drain that encoding was 7.3 s of the relay's
 * 19 s (docs/benchmarks.md, CPU profile). This module writes the same bytes into one buffer, in
 * one pass, and installs itself as kafkajs's Produce v3 request (v4 to v7 wrap v3 and differ in
 * the version number only). Everything else stays kafkajs's: metadata, partitioning, sequence
 * numbers, transactions, retries, connections and authentication.
 *
 * The bytes are kafkajs's own, byte for byte (test/unit/kafka-produce.test.ts compares them on
 * every shape of message the relay sends and a few it does not). It compresses batches itself,
 * synchronously, with codecs.ts (docs/adr/0017); messages with explicit timestamps go to
 * kafkajs's encoder unchanged. kafkajs 2.2.4 is its last
 * release; kafkajs-internals.ts installs this encoder, after checking that kafkajs is 2.2.4.
 */

const MAGIC = 2;
const TRANSACTIONAL = 16;

/** A growable scratch buffer, reused across requests; each request's bytes are copied out. */
let scratch = Buffer.allocUnsafe(1 << 20);
let at = 0;

function room(n: number): void {
  if (at + n <= scratch.length) return;
  let size = scratch.length * 2;
  while (size < at + n) size *= 2;
  const bigger = Buffer.allocUnsafe(size);
  scratch.copy(bigger, 0, 0, at);
  scratch = bigger;
}

/** Zigzag varint, as Kafka's record format (and kafkajs's writeVarInt) encodes it. */
function varint(v: number): void {
  let z = ((v << 1) ^ (v >> 31)) >>> 0;
  while (z >= 0x80) {
    scratch[at++] = (z & 0x7f) | 0x80;
    z >>>= 7;
  }
  scratch[at++] = z;
}

function varintSize(v: number): number {
  let z = ((v << 1) ^ (v >> 31)) >>> 0;
  let n = 1;
  while (z >= 0x80) {
    n++;
    z >>>= 7;
  }
  return n;
}

/** A length-prefixed (zigzag varint) string or byte field; null as length -1. */
function field(value: Value): void {
  if (value == null) {
    room(1);
    scratch[at++] = 1; // zigzag(-1)
    return;
  }
  if (Buffer.isBuffer(value)) {
    room(value.length + 5);
    varint(value.length);
    value.copy(scratch, at);
    at += value.length;
    return;
  }
  const v = typeof value === 'string' ? value : String(value);
  const units = v.length;
  if (units < 64) {
    // Most fields are short ASCII (header names, ids, positions): copied here, one store per
    // character, without a native call (the varint is one byte: under 64).
    room(units + 1);
    let p = at + 1;
    let i = 0;
    for (; i < units; i++) {
      const c = v.charCodeAt(i);
      if (c >= 0x80) break;
      scratch[p++] = c;
    }
    if (i === units) {
      scratch[at] = units << 1;
      at = p;
      return;
    }
    // At most 3 bytes per UTF-16 unit: a string under 22 units has a length under 64, whose
    // varint is one byte, so it is written straight after that byte.
    if (units < 22) {
      room(66);
      const n = scratch.write(v, at + 1, 'utf8');
      scratch[at] = n << 1;
      at += 1 + n;
      return;
    }
  } else if (units < 2730) {
    // 64 to 2729 units are 64 to 8189 bytes: a 2-byte varint, written after the bytes, so the
    // string is not scanned twice (once for its length, once to write it).
    room(units * 3 + 2);
    const n = scratch.write(v, at + 2, 'utf8');
    const z = n << 1;
    scratch[at] = (z & 0x7f) | 0x80;
    scratch[at + 1] = z >>> 7;
    at += 2 + n;
    return;
  }
  prefixed(v, 5, varint);
}

/** `v` in UTF-8 after its byte length, which `prefix` writes in at most `prefixMax` bytes. */
function prefixed(v: string, prefixMax: number, prefix: (n: number) => void): void {
  const n = Buffer.byteLength(v, 'utf8');
  room(n + prefixMax);
  prefix(n);
  scratch.write(v, at, n, 'utf8');
  at += n;
}

function int16(v: number): void {
  scratch.writeInt16BE(v, at);
  at += 2;
}
function int32(v: number): void {
  scratch.writeInt32BE(v, at);
  at += 4;
}
function int64(high: number, low: number): void {
  scratch.writeInt32BE(high | 0, at);
  scratch.writeInt32BE(low | 0, at + 4);
  at += 8;
}
function string(v: string | null): void {
  if (v === null) {
    int16(-1);
    return;
  }
  prefixed(v, 2, int16);
}

/** One message's record, or its record as already encoded. */
function record(m: KafkaMessage, offsetDelta: number): void {
  const raw = m[RAW];
  if (raw === undefined) {
    writeRecord(m.key, m.value, m.headers, offsetDelta);
    return;
  }
  room(raw.length);
  raw.copy(scratch, at);
  at += raw.length;
}

/** One record: varint length, attributes, timestamp delta 0, offset delta, key, value, headers. */
function writeRecord(key: Value, value: Value, headers: Record<string, Value | Value[]> | undefined, offsetDelta: number): void {
  room(16);
  // The body's length goes first; most bodies take a 2-byte varint (64 to 8191 bytes).
  const lengthAt = at;
  at += 2;
  const bodyAt = at;
  scratch[at++] = 0; // attributes
  scratch[at++] = 0; // timestampDelta 0 (zigzag varlong)
  varint(offsetDelta);
  field(key);
  field(value);
  if (headers === undefined) {
    room(1);
    scratch[at++] = 0;
  } else {
    const countAt = at;
    let count = 0;
    room(5);
    at += 1; // most records have fewer than 64 headers: a 1-byte count, fixed up below if not
    for (const k in headers) {
      const v = headers[k];
      if (Array.isArray(v)) {
        for (const one of v) {
          field(k);
          field(one);
          count++;
        }
      } else {
        field(k);
        field(v);
        count++;
      }
    }
    if (count < 64) scratch[countAt] = count << 1;
    else shift(countAt, 1, count);
  }
  const body = at - bodyAt;
  if (body >= 64 && body < 8192) {
    const z = body << 1;
    scratch[lengthAt] = (z & 0x7f) | 0x80;
    scratch[lengthAt + 1] = z >>> 7;
  } else shift(lengthAt, 2, body);
}

/** Rewrites the varint reserved at `pos` (`reserved` bytes) as `value`, moving what follows. */
function shift(pos: number, reserved: number, value: number): void {
  const size = varintSize(value);
  const delta = size - reserved;
  if (delta !== 0) {
    room(Math.max(0, delta));
    scratch.copyWithin(pos + size, pos + reserved, at);
    at += delta;
  }
  const end = at;
  at = pos;
  varint(value);
  at = end;
}

/** kafkajs's record batch v2 for one partition; `codec`: the attributes' compression id (0: none). */
function batch(p: PartitionData, transactional: boolean, producerId: LongLike, producerEpoch: number, now: number, codec: number): void {
  room(70);
  int32(p.partition);
  const sizeAt = at;
  at += 4; // record set size
  int64(0, 0); // first offset
  const lengthAt = at;
  at += 4; // batch length
  int32(0); // partition leader epoch
  scratch[at++] = MAGIC;
  const crcAt = at;
  at += 4;
  const bodyAt = at;
  int16((transactional ? TRANSACTIONAL : 0) | codec);
  int32(p.messages.length - 1); // last offset delta
  int64(Math.floor(now / 4_294_967_296), now >>> 0); // first timestamp
  int64(Math.floor(now / 4_294_967_296), now >>> 0); // max timestamp
  int64(producerId.high, producerId.low);
  int16(producerEpoch);
  int32(p.firstSequence ?? 0);
  int32(p.messages.length);
  const recordsAt = at;
  for (let i = 0; i < p.messages.length; i++) record(p.messages[i] as KafkaMessage, i);
  if (codec !== 0) {
    // The records, compressed as one block (the record count before them stays as it is).
    const compressed = (codecById(codec) as { compress(d: Buffer): Buffer }).compress(scratch.subarray(recordsAt, at));
    at = recordsAt;
    room(compressed.length);
    compressed.copy(scratch, at);
    at += compressed.length;
  }
  scratch.writeUInt32BE(crc32c(scratch, bodyAt, at), crcAt);
  scratch.writeInt32BE(at - lengthAt - 4, lengthAt);
  scratch.writeInt32BE(at - sizeAt - 4, sizeAt);
}

/**
 * The request payload kafkajs's Produce v3 `encode()` returns, as one Buffer, after `headroom`
 * bytes left free for the request header (request-framing.ts writes it there, in place).
 */
export function encodeProduce(args: ProduceArgs, headroom = 0): Buffer {
  const producerId = toLong(args.producerId ?? -1);
  const transactional = args.transactionalId != null;
  const codec = (args.compression ?? 0) & 7;
  if (codec !== 0 && codecById(codec) === undefined) throw new TypeError(`unknown compression codec ${codec}`);
  at = 0;
  room(16);
  string(args.transactionalId ?? null);
  int16(args.acks);
  int32(args.timeout);
  int32(args.topicData.length);
  for (const t of args.topicData) {
    string(t.topic);
    room(4);
    int32(t.partitions.length);
    const now = Date.now();
    for (const p of t.partitions) batch(p, transactional, producerId, args.producerEpoch ?? 0, now, codec);
  }
  const out = Buffer.allocUnsafe(headroom + at);
  scratch.copy(out, headroom, 0, at);
  return out;
}

/**
 * Encodes `messages[which[i]]` as records, each with the offset delta it will have in its partition's batch
 * of one Produce request (its index among that request's messages of the same partition), for a
 * producer elsewhere (a worker thread) to send as they are. Returns one buffer with every record
 * and each record's [start, end) in it.
 */
export function encodeRecords(
  messages: ReadonlyArray<{ readonly key: string; readonly payload: string | Buffer; readonly headers: Readonly<Record<string, string>> }>,
  which: ArrayLike<number>,
  offsetDeltas: ArrayLike<number>,
): { bytes: Buffer; ends: Uint32Array } {
  at = 0;
  const ends = new Uint32Array(which.length);
  for (let i = 0; i < which.length; i++) {
    const m = messages[which[i] as number] as (typeof messages)[number];
    writeRecord(m.key, m.payload, m.headers, offsetDeltas[i] as number);
    ends[i] = at;
  }
  const bytes = Buffer.from(new ArrayBuffer(at));
  scratch.copy(bytes, 0, 0, at);
  return { bytes, ends };
}
