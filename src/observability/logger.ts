import { pino, destination as pinoDestination, stdTimeFunctions } from 'pino';
import type { Logger } from 'pino';
import type { LogLevel } from '../config/schema.js';

export type { Logger } from 'pino';

/**
 * pino JSON on stderr. stderr, because stdout belongs to the `stdout` sink.
 * Secrets are redacted by path, and any `user:password@` in a logged URL is masked by the
 * serializers, so a connection string can be logged as is.
 */
export function createLogger(level: LogLevel = 'info', destination: NodeJS.WritableStream | number = 2): Logger {
  return pino(
    {
      level,
      base: { service: 'outboxd' },
      timestamp: stdTimeFunctions.isoTime,
      redact: {
        paths: ['password', '*.password', '*.*.password', 'sasl.password', 'url', '*.url'],
        censor: (value: unknown) => (typeof value === 'string' ? maskUrl(value) : '[redacted]'),
      },
      serializers: { err: serializeError },
      formatters: { level: (label) => ({ level: label }) },
    },
    typeof destination === 'number' ? pinoDestination({ fd: destination, sync: false }) : destination,
  );
}

function maskUrl(value: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value.replace(/(\/\/[^:/@]*:)[^@]*@/, '$1***@') : '[redacted]';
}

function serializeError(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: String(err) };
  const out: Record<string, unknown> = {
    type: err.name,
    message: err.message.replace(/(\/\/[^:/@\s]*:)[^@\s]*@/g, '$1***@'),
  };
  const e = err as Error & { code?: unknown; retriable?: unknown; cause?: unknown };
  if (e.code !== undefined) out.code = e.code;
  if (e.retriable !== undefined) out.retriable = e.retriable;
  if (e.cause !== undefined) out.cause = serializeError(e.cause);
  if (process.env.OUTBOXD_LOG_STACKS === '1' && err.stack) out.stack = err.stack;
  return out;
}
