import { redact } from './redact.js';

/**
 * Typed errors. Every error outboxd raises on purpose carries a stable `code`, a `retriable`
 * flag (may the same operation succeed if tried again?) and, where there is one, a `cause`.
 * The CLI prints `error.message` as one line, and maps the class to an exit code.
 */

export type ErrorCode =
  | 'CONFIG_INVALID'
  | 'USAGE'
  | 'SLOT_LOST'
  | 'SLOT_INVALIDATED'
  | 'SLOT_MISSING'
  | 'SLOT_ACTIVE'
  | 'PG_NOT_LOGICAL'
  | 'PG_CONNECTION'
  | 'PG_PROTOCOL'
  | 'POISON'
  | 'RECOVERY_HALTED'
  | 'SINK_RETRIABLE'
  | 'SINK_FATAL'
  | 'INTERNAL';

export class OutboxdError extends Error {
  readonly code: ErrorCode;
  readonly retriable: boolean;
  constructor(code: ErrorCode, message: string, options: { retriable?: boolean; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retriable = options.retriable ?? false;
  }
}

/** A config value is wrong. `path` is the YAML path (`sink.kafka.brokers[0]`). */
export class ConfigError extends OutboxdError {
  readonly path: string;
  constructor(path: string, problem: string) {
    super('CONFIG_INVALID', path ? `config ${path}: ${problem}` : `config: ${problem}`);
    this.path = path;
  }
}

export class UsageError extends OutboxdError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

/**
 * The replication slot is gone or unusable. Never recovered automatically: a new slot would
 * start at "now" and silently skip every outbox row written in between.
 */
export class SlotError extends OutboxdError {}

/** Postgres is unreachable or dropped the connection; the relay reconnects with backoff. */
export class PgConnectionError extends OutboxdError {
  constructor(message: string, cause?: unknown) {
    super('PG_CONNECTION', message, { retriable: true, cause });
  }
}

/** Another session holds the slot (SQLSTATE 55006): this instance waits as a standby. */
export class SlotBusyError extends OutboxdError {
  constructor(message: string, cause?: unknown) {
    super('SLOT_ACTIVE', message, { retriable: true, cause });
  }
}

/**
 * One message cannot be mapped or published (null key, missing route, oversized, unroutable).
 * Handled by the poison policy, never retried as is.
 */
export class PoisonError extends OutboxdError {
  readonly reason: PoisonReason;
  /** The message's id and key, when they could be read: its dead letter carries them. */
  subject: { id: string | null; key: string | null } | null = null;
  /** Where in the WAL, when Postgres said (its CONTEXT line), for a row it could not send. */
  where: string | null = null;
  constructor(reason: PoisonReason, message: string, cause?: unknown) {
    super('POISON', message, { cause });
    this.reason = reason;
  }
}

export type PoisonReason =
  | 'missing_id'
  | 'null_key'
  | 'missing_route'
  | 'missing_payload'
  | 'bad_headers'
  | 'bad_message'
  | 'bad_encoding'
  | 'oversized'
  | 'unroutable'
  | 'rejected'
  /** An AMQP shortstr field (message id, type, routing key, header name, ...) over 255 bytes. */
  | 'field_too_long'
  /** The AMQP header table over what amqplib can encode (64 KiB). */
  | 'headers_too_large'
  /** sink.cloudevents: a required attribute (type, a field of the source template) is null or empty. */
  | 'missing_ce_attribute'
  /** sink.cloudevents: an attribute the CloudEvents type system forbids, or a row header that would overwrite one. */
  | 'bad_ce_attribute';

/** The broker refused or failed a publish. `retriable` decides between backoff and stopping. */
export class SinkError extends OutboxdError {
  readonly reason: string;
  constructor(reason: string, message: string, options: { retriable: boolean; cause?: unknown }) {
    super(options.retriable ? 'SINK_RETRIABLE' : 'SINK_FATAL', message, options);
    this.reason = reason;
  }
}

/**
 * The broker does not know a destination (a Kafka topic that does not exist and is not created
 * for us). Retried, since it may be created any moment; never poison. `destinations` names them
 * for /readyz and the metrics.
 */
export class MissingDestinationError extends SinkError {
  constructor(
    readonly destinations: readonly string[],
    message: string,
    cause: unknown,
  ) {
    super('destination_missing', message, { retriable: true, cause });
  }
}

/**
 * Exactly-once: another producer took over this relay's transactional id (a second relay, a
 * standby that took over while this one was paused). Never retried: the relay stops publishing
 * at once and exits with ExitCode.fenced, confirming nothing.
 */
export class FencedError extends SinkError {
  constructor(message: string, cause?: unknown) {
    super('fenced', message, { retriable: false, cause });
  }
}

/** Exit codes of the CLI. Documented in the README; scripts rely on them. */
export const ExitCode = {
  ok: 0,
  /** A fatal runtime error: the broker refused for good, Postgres protocol error, a bug. */
  failure: 1,
  /** Bad command line. */
  usage: 2,
  /** The config file is invalid, or a config value is refused by Postgres (publication ownership, columns). */
  config: 3,
  /** The replication slot is lost, dropped, invalidated, missing (createSlot false) or unusable: operator action needed. */
  slotLost: 4,
  /** Exactly-once: another relay took over the transactional id (fenced); this one published nothing more. */
  fenced: 5,
  /** Forced exit on a second signal, before in-flight messages were confirmed. */
  forced: 130,
} as const;

export function exitCodeFor(err: unknown): number {
  if (err instanceof ConfigError) return ExitCode.config;
  if (err instanceof UsageError) return ExitCode.usage;
  if (err instanceof SlotError) return ExitCode.slotLost;
  if (err instanceof FencedError) return ExitCode.fenced;
  return ExitCode.failure;
}

/** One line, no stack, secrets redacted: what the CLI prints. */
export function oneLine(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  return redact(message.replace(/\s*\n\s*/g, ' ')).trim();
}
