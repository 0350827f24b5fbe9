import { OutboxdError, PgConnectionError, PoisonError, SlotBusyError } from '../errors.js';

/**
 * The one place where a Postgres or driver error becomes a decision, by SQLSTATE (or socket
 * error): try again later, wait as a standby, halt on a row, or stop.
 */

/** Shutdown, connection and resource SQLSTATEs: the server may answer again later. */
const RETRIABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '08000', '08003', '08006', '08001', '08004', '53300']);
const RETRIABLE_SYSCALL = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH']);
/** The slot is held by another session: wait as a standby. */
const SLOT_IN_USE = '55006';
/** 22021 invalid byte sequence, 22P05 untranslatable character: the server cannot send a row. */
const UNCONVERTIBLE = new Set(['22021', '22P05']);
const AUTH = new Set(['28P01', '28000']);
/** statement_timeout or a cancel: the query was stopped, the connection is fine. */
const CANCELED = '57014';

/** Wraps a driver error as a typed OutboxdError; `doing` says what was being done. */
export function classifyPgError(err: unknown, doing: string): OutboxdError {
  if (err instanceof OutboxdError) return err;
  const e = err as { code?: string; message?: string; where?: string };
  const message = `${doing}: ${e?.message ?? String(err)}`;
  const code = e?.code;
  if (code === SLOT_IN_USE) return new SlotBusyError(message, err);
  if (code && UNCONVERTIBLE.has(code)) {
    // The walsender cannot convert a text value to UTF-8: the row can never be read, so it
    // cannot be dead-lettered either. The server's CONTEXT names its position.
    const p = new PoisonError('bad_encoding', `${message} (Postgres cannot send a text value as UTF-8)`, err);
    p.where = e.where ?? null;
    return p;
  }
  if (code && (RETRIABLE_SQLSTATES.has(code) || RETRIABLE_SYSCALL.has(code) || code === CANCELED))
    return new PgConnectionError(message, err);
  if (
    /Connection terminated|connection timeout|timeout expired|ECONN|socket hang up|not queryable|the database system is (starting up|shutting down)/i.test(
      e?.message ?? '',
    )
  ) {
    return new PgConnectionError(message, err);
  }
  if (code && AUTH.has(code)) return new OutboxdError('PG_CONNECTION', `${message} (check postgres.url credentials)`, { cause: err });
  return new OutboxdError('PG_PROTOCOL', message, { cause: err });
}

/** The SQLSTATE of a driver error, or undefined. */
function sqlstate(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** 42710 duplicate_object: the slot or publication exists already (created by a concurrent relay). */
export function alreadyExists(err: unknown): boolean {
  return sqlstate(err) === '42710';
}

/** 57014 query_canceled: statement_timeout, or a cancel (pg_cancel_backend) ended the statement. */
export function wasCanceled(err: unknown): boolean {
  return sqlstate(err) === CANCELED;
}

/** 55P03 lock_not_available: a statement waited past lock_timeout. */
export function lockTimedOut(err: unknown): boolean {
  return sqlstate(err) === '55P03';
}

/** 42501 insufficient_privilege. */
export function notAllowed(err: unknown): boolean {
  return sqlstate(err) === '42501';
}

/**
 * Class 22, data exception: a value the statement was given cannot be read as its type (a time
 * that is not a timestamptz). The input is wrong, not the server or the connection.
 */
export function isDataException(err: unknown): boolean {
  return sqlstate(err)?.startsWith('22') === true;
}
