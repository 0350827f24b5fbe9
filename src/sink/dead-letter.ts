import type { DeadLetter } from '../interfaces.js';
import { LSN_HEADER, XID_HEADER } from '../outbox/mapper.js';
import { formatLsn } from '../lsn.js';

/** Headers every sink puts on a dead letter: the original headers plus what went wrong. */
export function deadLetterHeaders(letter: DeadLetter): Record<string, string> {
  const h: Record<string, string> = { ...letter.headers };
  h['outboxd.error'] = letter.error.message;
  h['outboxd.error_reason'] = letter.error.reason;
  if (letter.destination) h['outboxd.original_destination'] = letter.destination;
  h[LSN_HEADER] = formatLsn(letter.txn.commitLsn);
  h[XID_HEADER] = String(letter.txn.xid);
  return h;
}

/**
 * A dead letter's body, cut down when it would itself be too large for the broker (the usual
 * reason it is a dead letter). The original size is then recorded in a header.
 */
export function deadLetterBody(letter: DeadLetter, maxBytes: number, headers: Record<string, string>): string | Buffer {
  const size = typeof letter.payload === 'string' ? Buffer.byteLength(letter.payload) : letter.payload.length;
  if (size <= maxBytes) return letter.payload;
  headers['outboxd.payload_truncated_from'] = String(size);
  return '';
}
