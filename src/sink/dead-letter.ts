import type { DeadLetter, OutboxMessage } from '../interfaces.js';
import type { PoisonError } from '../errors.js';
import { formatLsn } from '../lsn.js';
import { LSN_HEADER, XID_HEADER } from '../outbox/position-headers.js';

/** A dead letter as a sink sends it: its headers, body and key. */
export interface DeadLetterForm {
  readonly headers: Record<string, string>;
  readonly body: string | Buffer;
  /** The message's key, or null: Kafka's record key, RabbitMQ's `aggregateid` header. */
  readonly key: string | null;
  /**
   * What was dropped to make it fit: `none`, or a comma-separated list: `payload`, `headers`
   * (the original headers), then any of `id`, `key` and `original_destination`.
   */
  readonly shrunk: string;
}

/** Header naming what a dead letter lost to fit the broker's limits, and the payload's size then. */
export const SHRUNK_HEADER = 'outboxd.dead_letter_shrunk';
export const PAYLOAD_BYTES_HEADER = 'outboxd.payload_bytes';
export const ORIGINAL_DESTINATION_HEADER = 'outboxd.original_destination';

/** The error text on a dead letter, bounded so that it can never be what makes it too large. */
const MAX_ERROR_CHARS = 1024;

/**
 * The most bytes of the id, the key or the original destination that the smallest form of a
 * dead letter carries; a longer one is left out of it (and named in `outboxd.dead_letter_shrunk`),
 * never cut short: a shortened id or key would name another message. So the smallest form is a
 * few KiB at most, whatever the message held, and every broker takes it.
 */
export const DEAD_LETTER_VALUE_MAX_BYTES = 1024;

/**
 * The forms of a dead letter, largest first. A poison message is often poison because it is too
 * large (its payload, its headers, its id or key), and its dead letter would be refused for the
 * same reason and retried forever, or stop the relay. So a sink tries these in order and sends
 * the first the broker takes:
 * 1. the original headers, the error, and the payload;
 * 2. the same without the payload;
 * 3. only the message id, the key, the error and the source position;
 * 4. only when the id, the key or the original destination is over DEAD_LETTER_VALUE_MAX_BYTES:
 *    form 3 without them. Every value in it is bounded, so it always fits.
 * The error headers and the `outboxd.dead_letter_shrunk` header say what was dropped. `extra`
 * headers (a sink's own, such as RabbitMQ's routing-key fallback) go into every form: keep them short.
 */
export function deadLetterForms(letter: DeadLetter, extra: Readonly<Record<string, string>> = {}): DeadLetterForm[] {
  const error: Record<string, string> = {
    'outboxd.error':
      letter.error.message.length > MAX_ERROR_CHARS ? `${letter.error.message.slice(0, MAX_ERROR_CHARS)}…` : letter.error.message,
    'outboxd.error_reason': letter.error.reason,
  };
  if (letter.destination !== null) error[ORIGINAL_DESTINATION_HEADER] = letter.destination;
  error[LSN_HEADER] = formatLsn(letter.txn.commitLsn);
  error[XID_HEADER] = String(letter.txn.xid);
  Object.assign(error, extra);
  const size = typeof letter.payload === 'string' ? Buffer.byteLength(letter.payload) : letter.payload.length;
  const id: Record<string, string> = letter.id !== null ? { id: letter.id } : {};
  const key = letter.key;
  const forms: DeadLetterForm[] = [
    { headers: { ...letter.headers, ...error }, body: letter.payload, key, shrunk: 'none' },
    {
      headers: { ...letter.headers, ...error, [SHRUNK_HEADER]: 'payload', [PAYLOAD_BYTES_HEADER]: String(size) },
      body: '',
      key,
      shrunk: 'payload',
    },
    {
      headers: { ...id, ...error, [SHRUNK_HEADER]: 'payload,headers', [PAYLOAD_BYTES_HEADER]: String(size) },
      body: '',
      key,
      shrunk: 'payload,headers',
    },
  ];
  const tooLong = (v: string | null) =>
    v !== null && v.length * 3 > DEAD_LETTER_VALUE_MAX_BYTES && Buffer.byteLength(v) > DEAD_LETTER_VALUE_MAX_BYTES;
  const dropped = [
    ...(tooLong(letter.id) ? ['id'] : []),
    ...(tooLong(key) ? ['key'] : []),
    ...(tooLong(letter.destination) ? ['original_destination'] : []),
  ];
  if (dropped.length > 0) {
    const headers: Record<string, string> = { ...(dropped.includes('id') ? {} : id), ...error };
    if (dropped.includes('original_destination')) delete headers[ORIGINAL_DESTINATION_HEADER];
    const shrunk = `payload,headers,${dropped.join(',')}`;
    headers[SHRUNK_HEADER] = shrunk;
    headers[PAYLOAD_BYTES_HEADER] = String(size);
    forms.push({ headers, body: '', key: dropped.includes('key') ? null : key, shrunk });
  }
  return forms;
}

/** Bytes of a form's headers, body and key, as a size check counts them. */
export function formBytes(form: DeadLetterForm): number {
  let n = typeof form.body === 'string' ? Buffer.byteLength(form.body) : form.body.length;
  if (form.key !== null) n += Buffer.byteLength(form.key);
  for (const k in form.headers) n += Buffer.byteLength(k) + Buffer.byteLength(form.headers[k] as string);
  return n;
}

/** The dead letter of a message the sink refuses (before or at the broker): the message as it would have gone. */
export function letterFor(m: OutboxMessage, error: PoisonError): DeadLetter {
  const { id, key, destination, payload, contentType, headers, txn, index } = m;
  return { error, id, key, destination, payload, contentType, headers, txn, index };
}
