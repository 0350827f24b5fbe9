import type { OutboxMessage } from '../../interfaces.js';

/**
 * The frames of one AMQP 0-9-1 `basic.publish` of an outbox message, byte for byte what amqplib
 * 0.10 writes for `channel.publish(exchange, routingKey, body, properties(m))` (sink.ts), built in
 * one pass into one buffer (ADR 0021).
 *
 * amqplib builds a publish from an options object, copies its header table through a prototype
 * chain, encodes the method frame, the properties (through a 64 KiB scratch buffer) and each body
 * frame into buffers of their own (zero-filled), and then copies them all into one more. That was
 * about 14 of the relay's 32 µs of CPU per RabbitMQ message; this writes the same bytes once.
 *
 * Returns null for anything it does not write exactly as amqplib does: a short string over 255
 * bytes, a header value that is not a string, a header table over 64 KiB, a timestamp before
 * 1970, headers too large for its scratch space. The sink then publishes through amqplib, which
 * gives its own result (usually the error the limit check in limits.ts has already named).
 * test/unit/amqp-encode.test.ts compares the bytes with amqplib's own encoder.
 */

/** Method and content-header frames are written here first; 256 KiB holds any that amqplib would send. */
const SCRATCH = Buffer.allocUnsafe(256 * 1024);
/** amqplib encodes a header table into a 64 KiB scratch buffer; past that it throws. */
const TABLE_MAX = 65_536;

const FRAME_METHOD = 1;
const FRAME_HEADER = 2;
const FRAME_BODY = 3;
const FRAME_END = 206;
/** Class 60 (basic), method 40 (publish). */
const BASIC_PUBLISH = (60 << 16) | 40;
/** Class 60, weight 0. */
const BASIC_CLASS = 60 << 16;

const F_CONTENT_TYPE = 0x8000;
const F_HEADERS = 0x2000;
const F_DELIVERY_MODE = 0x1000;
const F_CORRELATION_ID = 0x0400;
const F_REPLY_TO = 0x0200;
const F_MESSAGE_ID = 0x0080;
const F_TIMESTAMP = 0x0040;
const F_TYPE = 0x0020;
const F_APP_ID = 0x0008;

const APP_ID = 'outboxd';
const PERSISTENT = 2;

/**
 * Where a string may end in SCRATCH: every string is checked against it before it is written, at
 * 3 bytes per UTF-16 unit, so none is ever cut short; the fixed-size fields between and after
 * the strings fit in the 64 bytes beyond.
 */
const ROOM = SCRATCH.length - 64;

/** Writes a `shortstr` at `at`; returns the offset after it, or -1 when the string is over 255 bytes (or out of room). */
function shortstr(s: string, at: number): number {
  if (at + 1 + 3 * s.length > ROOM) return -1;
  const n = SCRATCH.write(s, at + 1);
  if (n > 255) return -1;
  SCRATCH[at] = n;
  return at + 1 + n;
}

/**
 * The header table `{ ...m.headers, aggregatetype, aggregateid }` as amqplib encodes it (every
 * value a `longstr`, in the object's key order), at `at`; the offset after it, or -1.
 */
function table(m: OutboxMessage, at: number): number {
  const start = at;
  let o = at + 4;
  let sawType = false;
  let sawId = false;
  const h = m.headers;
  for (const k in h) {
    let v: unknown = h[k];
    if (k === 'aggregatetype') {
      v = m.aggregateType;
      sawType = true;
    } else if (k === 'aggregateid') {
      v = m.key;
      sawId = true;
    }
    if (v === undefined) continue;
    if (typeof v !== 'string') return -1;
    o = entry(k, v, o);
    if (o < 0) return -1;
  }
  if (!sawType) o = entry('aggregatetype', m.aggregateType, o);
  if (o >= 0 && !sawId) o = entry('aggregateid', m.key, o);
  if (o < 0 || o - start > TABLE_MAX) return -1;
  SCRATCH.writeUInt32BE(o - start - 4, start);
  return o;
}

function entry(k: string, v: string, at: number): number {
  const o = shortstr(k, at);
  if (o < 0) return -1;
  if (o + 5 + 3 * v.length > ROOM) return -1;
  SCRATCH[o] = 0x53; // 'S', a longstr
  const n = SCRATCH.write(v, o + 5);
  SCRATCH.writeUInt32BE(n, o + 1);
  return o + 5 + n;
}

/**
 * The frames of the publish of `m` to `exchange` with `routingKey` on channel `channel` of a
 * connection whose frames carry at most `frameMax` bytes, `mandatory` and `persistent`; or null
 * (see above).
 */
export function encodePublish(channel: number, frameMax: number, exchange: string, routingKey: string, m: OutboxMessage): Buffer | null {
  const seconds = Math.floor(m.txn.commitTimeMs / 1000);
  if (!(seconds >= 0 && seconds <= Number.MAX_SAFE_INTEGER)) return null;
  const s = SCRATCH;

  // Method frame: basic.publish(ticket 0, exchange, routing key, mandatory).
  s[0] = FRAME_METHOD;
  s.writeUInt16BE(channel, 1);
  s.writeUInt32BE(BASIC_PUBLISH, 7);
  s.writeUInt16BE(0, 11);
  let o = shortstr(exchange, 13);
  if (o < 0) return null;
  o = shortstr(routingKey, o);
  if (o < 0) return null;
  s[o++] = 1; // mandatory; immediate is never set
  s[o] = FRAME_END;
  s.writeUInt32BE(o - 7, 3);
  const h = ++o;

  // Content header frame: the body's size, the property flags, the properties in flag order.
  const payload = m.payload;
  const bodyLen = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
  s[h] = FRAME_HEADER;
  s.writeUInt16BE(channel, h + 1);
  s.writeUInt32BE(BASIC_CLASS, h + 7);
  s.writeUInt32BE(Math.floor(bodyLen / 0x1_0000_0000), h + 11);
  s.writeUInt32BE(bodyLen >>> 0, h + 15);
  let flags = F_CONTENT_TYPE | F_HEADERS | F_DELIVERY_MODE | F_MESSAGE_ID | F_TIMESTAMP | F_APP_ID;
  o = shortstr(m.contentType, h + 21);
  if (o < 0) return null;
  o = table(m, o);
  if (o < 0) return null;
  s[o++] = PERSISTENT;
  if (m.correlationId !== null) {
    flags |= F_CORRELATION_ID;
    o = shortstr(m.correlationId, o);
    if (o < 0) return null;
  }
  if (m.replyTo !== null) {
    flags |= F_REPLY_TO;
    o = shortstr(m.replyTo, o);
    if (o < 0) return null;
  }
  o = shortstr(m.id, o);
  if (o < 0) return null;
  s.writeUInt32BE(Math.floor(seconds / 0x1_0000_0000), o);
  s.writeUInt32BE(seconds >>> 0, o + 4);
  o += 8;
  if (m.type !== null) {
    flags |= F_TYPE;
    o = shortstr(m.type, o);
    if (o < 0) return null;
  }
  o = shortstr(APP_ID, o);
  if (o < 0) return null;
  s[o] = FRAME_END;
  s.writeUInt32BE(o - h - 7, h + 3);
  s.writeUInt16BE(flags, h + 19);
  const head = o + 1;

  // Body frames, each of at most frameMax bytes (8 of them the frame's own).
  const maxBody = frameMax - 8;
  const frames = bodyLen === 0 ? 0 : Math.ceil(bodyLen / maxBody);
  const out = Buffer.allocUnsafe(head + bodyLen + 8 * frames);
  s.copy(out, 0, 0, head);
  const body = frames > 1 && typeof payload === 'string' ? Buffer.from(payload) : payload;
  let at = head;
  for (let from = 0; from < bodyLen; from += maxBody) {
    const n = Math.min(maxBody, bodyLen - from);
    out[at] = FRAME_BODY;
    out.writeUInt16BE(channel, at + 1);
    out.writeUInt32BE(n, at + 3);
    if (typeof body === 'string') out.write(body, at + 7);
    else body.copy(out, at + 7, from, from + n);
    out[at + 7 + n] = FRAME_END;
    at += 8 + n;
  }
  return out;
}
