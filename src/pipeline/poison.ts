import type { PoisonPolicy } from '../config/config.js';
import { PoisonError } from '../errors.js';
import type { DeadLetter, TxnRef } from '../interfaces.js';
import type { Logger } from '../observability/logger.js';
import type { Publisher } from './publisher.js';

/**
 * What happens to an event that cannot be published: its dead letter, and the poison policy
 * (`outbox.onPoison`) applied to it. The relay's pipeline and a replay (src/replay/) share these,
 * so a row is poison for the same reasons, and is dead-lettered the same way, in both.
 */

/** A column value the relay cannot carry: over the sink's message limit, or not UTF-8. */
export function valuePoison(reason: 'oversized' | 'bad_encoding', column: string, bytes: number, maxValueBytes: number): PoisonError {
  return reason === 'oversized'
    ? new PoisonError('oversized', `column ${column} holds ${bytes} bytes, over the sink's message limit of ${maxValueBytes} bytes`)
    : new PoisonError('bad_encoding', `column ${column} holds bytes that are not valid UTF-8`);
}

/**
 * The dead letter of an event that could not be mapped: the id and key as far as they could be
 * read, and `payload` (a row as JSON text, or a logical message's bytes). `headers` are added
 * after the id (a replay's run header).
 */
export function poisonLetter(
  error: PoisonError,
  txn: TxnRef,
  index: number,
  id: string | null,
  key: string | null,
  payload: string | Buffer,
  headers?: Readonly<Record<string, string>>,
): DeadLetter {
  return {
    index,
    id,
    key,
    destination: null,
    payload,
    contentType: typeof payload === 'string' ? 'application/json' : 'application/octet-stream',
    headers: id ? { id, ...headers } : { ...headers },
    error,
    txn,
  };
}

/**
 * Applies the poison policy to one letter. Under `halt`, logs the error line (`stops` says what
 * stops at it) and resolves false: the caller halts. Under `dead-letter`, resolves true once the
 * dead-letter destination confirmed it (rejects as Publisher.deadLetter does). `context` joins
 * both log lines (the relay's xid).
 */
export async function disposePoison(
  policy: PoisonPolicy,
  letter: DeadLetter,
  publisher: Publisher,
  log: Logger,
  stops: string,
  context: Readonly<Record<string, unknown>> = {},
): Promise<boolean> {
  const { id, key, error } = letter;
  if (policy === 'halt') {
    log.error({ err: error, id, key, ...context, reason: error.reason }, `poison message: halting (outbox.onPoison is halt); ${stops}`);
    return false;
  }
  await publisher.deadLetter(letter);
  log.warn({ id, key, ...context, reason: error.reason, error: error.message }, 'poison message dead-lettered');
  return true;
}
