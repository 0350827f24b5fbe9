import type { DeadLetter, OutboxMessage } from '../interfaces.js';
import type { PoisonError } from '../errors.js';
import { formatLsn } from '../lsn.js';
import { LSN_HEADER, XID_HEADER } from '../outbox/mapper.js';

/** A dead letter as a sink sends it: its headers and body. */
export interface DeadLetterForm {
  readonly headers: Record<string, string>;
  readonly body: string | Buffer;
  /** What was dropped to make it fit: none, the payload, or the payload and the original headers. */
  readonly shrunk: 'none' | 'payload' | 'payload,headers';
}

/** Header naming what a dead letter lost to fit the broker's limits, and the payload's size then. */
export const SHRUNK_HEADER = 'outboxd.dead_letter_shrunk';
export const PAYLOAD_BYTES_HEADER = 'outboxd.payload_bytes';

/** The error text on a dead letter, bounded so that it can never be what makes it too large. */
const MAX_ERROR_CHARS = 1024;

/**
 * The forms of a dead letter, largest first. A poison message is often poison because it is too
 * large (its payload, or its headers), and its dead letter would be refused for the same reason
 * and retried forever. So a sink tries these in order and sends the first the broker takes:
 * 1. the original headers, the error, and the payload;
 * 2. the same without the payload;
 * 3. only the message id, the error and the source position.
 * The error headers and the `outboxd.dead_letter_shrunk` header say what was dropped.
 */
export function deadLetterForms(letter: DeadLetter): DeadLetterForm[] {
  const error: Record<string, string> = {
    'outboxd.error':
      letter.error.message.length > MAX_ERROR_CHARS ? `${letter.error.message.slice(0, MAX_ERROR_CHARS)}…` : letter.error.message,
    'outboxd.error_reason': letter.error.reason,
  };
  if (letter.destination) error['outboxd.original_destination'] = letter.destination;
  error[LSN_HEADER] = formatLsn(letter.txn.commitLsn);
  error[XID_HEADER] = String(letter.txn.xid);
  const size = typeof letter.payload === 'string' ? Buffer.byteLength(letter.payload) : letter.payload.length;
  const id: Record<string, string> = letter.id !== null ? { id: letter.id } : {};
  return [
    { headers: { ...letter.headers, ...error }, body: letter.payload, shrunk: 'none' },
    {
      headers: { ...letter.headers, ...error, [SHRUNK_HEADER]: 'payload', [PAYLOAD_BYTES_HEADER]: String(size) },
      body: '',
      shrunk: 'payload',
    },
    {
      headers: { ...id, ...error, [SHRUNK_HEADER]: 'payload,headers', [PAYLOAD_BYTES_HEADER]: String(size) },
      body: '',
      shrunk: 'payload,headers',
    },
  ];
}

/** Bytes of a form's headers and body, as a size check counts them. */
export function formBytes(form: DeadLetterForm): number {
  let n = typeof form.body === 'string' ? Buffer.byteLength(form.body) : form.body.length;
  for (const k in form.headers) n += Buffer.byteLength(k) + Buffer.byteLength(form.headers[k] as string);
  return n;
}

/** The dead letter of a message the sink refuses (before or at the broker): the message as it would have gone. */
export function letterFor(m: OutboxMessage, error: PoisonError): DeadLetter {
  const { id, key, destination, payload, contentType, headers, txn, index } = m;
  return { error, id, key, destination, payload, contentType, headers, txn, index };
}
