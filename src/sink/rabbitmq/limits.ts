import type amqp from 'amqplib';
import { PoisonError } from '../../errors.js';
import type { OutboxMessage } from '../../interfaces.js';

/**
 * The limits of AMQP 0-9-1 as amqplib encodes a publish, checked before publishing. Past one of
 * them amqplib throws a TypeError or RangeError from inside `publish()` (after it has queued the
 * confirm callback, so the channel's confirms are out of step from then on), or, for a header
 * table over its 64 KiB scratch buffer, silently truncates the headers. So a message that breaks
 * one is poison, named, and never handed to amqplib.
 */

/** A `shortstr`: a one-byte length, so at most 255 bytes of UTF-8. */
export const SHORTSTR_MAX_BYTES = 255;
/** amqplib encodes a header table into a 64 KiB scratch buffer. */
export const HEADER_TABLE_MAX_BYTES = 65_536;

const SHORTSTR_PROPERTIES = [
  'contentType',
  'contentEncoding',
  'correlationId',
  'replyTo',
  'expiration',
  'messageId',
  'type',
  'userId',
  'appId',
  'clusterId',
] as const;

/** Bytes of `s` as UTF-8, computed only when its length could put it over `limit`. */
function overLimit(s: string, limit: number): number | null {
  if (s.length * 3 <= limit) return null;
  const bytes = Buffer.byteLength(s);
  return bytes > limit ? bytes : null;
}

/**
 * The first AMQP limit that a publish with this routing key and these properties breaks, as a
 * poison error naming the field; null when it fits. Header values must be strings (outboxd's are).
 */
export function amqpLimitProblem(routingKey: string, props: amqp.Options.Publish): PoisonError | null {
  const rk = overLimit(routingKey, SHORTSTR_MAX_BYTES);
  if (rk !== null) return tooLong('routing key', rk);
  for (const name of SHORTSTR_PROPERTIES) {
    const v = (props as Record<string, unknown>)[name];
    if (typeof v !== 'string') continue;
    const n = overLimit(v, SHORTSTR_MAX_BYTES);
    if (n !== null) return tooLong(`property ${name}`, n);
  }
  const headers = props.headers as Record<string, unknown> | undefined;
  if (headers === undefined) return null;
  // Upper bound first (3 bytes per UTF-16 unit); the exact size only when that is too much.
  let bound = 4;
  for (const k in headers) {
    const v = headers[k];
    if (v === undefined) continue;
    bound += 6 + 3 * (k.length + (typeof v === 'string' ? v.length : 8));
  }
  if (bound <= HEADER_TABLE_MAX_BYTES) {
    for (const k in headers) {
      if (k.length * 3 > SHORTSTR_MAX_BYTES) {
        const n = overLimit(k, SHORTSTR_MAX_BYTES);
        if (n !== null) return tooLong(`header name "${k.slice(0, 40)}…"`, n);
      }
    }
    return null;
  }
  let size = 4;
  for (const k in headers) {
    const v = headers[k];
    if (v === undefined) continue;
    const keyBytes = Buffer.byteLength(k);
    if (keyBytes > SHORTSTR_MAX_BYTES) return tooLong(`header name "${k.slice(0, 40)}…"`, keyBytes);
    size += 1 + keyBytes + 1 + 4 + (typeof v === 'string' ? Buffer.byteLength(v) : 8);
  }
  if (size > HEADER_TABLE_MAX_BYTES) {
    return new PoisonError(
      'headers_too_large',
      `the AMQP header table is ${size} bytes; amqplib carries at most ${HEADER_TABLE_MAX_BYTES} (it would cut the rest off silently)`,
    );
  }
  return null;
}

/** A string of at most this many UTF-16 units is at most 255 bytes of UTF-8. */
const SURELY_SHORT = Math.floor(SHORTSTR_MAX_BYTES / 3);

/**
 * True when the publish of `m` (sink.ts, properties) is within every limit above whatever its
 * characters: every short string at most 85 UTF-16 units, the header table's upper bound within
 * 64 KiB. The common case, answered without building the publish's properties; false means only
 * "look closer" (amqpLimitProblem).
 */
export function surelyWithinLimits(m: OutboxMessage): boolean {
  if (
    m.destination.length > SURELY_SHORT ||
    m.contentType.length > SURELY_SHORT ||
    m.id.length > SURELY_SHORT ||
    (m.correlationId?.length ?? 0) > SURELY_SHORT ||
    (m.replyTo?.length ?? 0) > SURELY_SHORT ||
    (m.type?.length ?? 0) > SURELY_SHORT
  )
    return false;
  // aggregatetype and aggregateid, which the publish adds to the headers.
  let bound = 4 + 6 + 3 * (13 + m.aggregateType.length) + 6 + 3 * (11 + m.key.length);
  const h = m.headers;
  for (const k in h) {
    if (k.length > SURELY_SHORT) return false;
    const v = h[k];
    bound += 6 + 3 * (k.length + (typeof v === 'string' ? v.length : 8));
  }
  return bound <= HEADER_TABLE_MAX_BYTES;
}

function tooLong(what: string, bytes: number): PoisonError {
  return new PoisonError('field_too_long', `AMQP ${what} is ${bytes} bytes; AMQP allows at most ${SHORTSTR_MAX_BYTES}`);
}
