import { pino, destination as pinoDestination, stdTimeFunctions } from 'pino';
import type { Logger } from 'pino';
import type { LogLevel } from '../config/config.js';
import { redact, redactDeep } from '../redact.js';

export type { Logger } from 'pino';

/**
 * pino JSON on stderr. stderr, because stdout belongs to the `stdout` sink.
 * Every line goes through the one redaction (redact.ts): the message, every string field, and
 * errors with their causes and stacks. Fields named like a password are censored whole.
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
      formatters: { level: (label) => ({ level: label }), log: (obj) => redactDeep(obj) as Record<string, unknown> },
      hooks: {
        logMethod(args, method) {
          for (let i = 0; i < args.length; i++) if (typeof args[i] === 'string') args[i] = redact(args[i] as string);
          method.apply(this, args);
        },
      },
    },
    typeof destination === 'number' ? pinoDestination({ fd: destination, sync: false }) : destination,
  );
}

function maskUrl(value: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? redact(value) : '[redacted]';
}

function serializeError(err: unknown): Record<string, unknown> {
  if (!(err instanceof Error)) return { message: String(err) };
  const out: Record<string, unknown> = {
    type: err.name,
    message: redact(err.message),
  };
  const e = err as Error & { code?: unknown; retriable?: unknown; cause?: unknown };
  if (e.code !== undefined) out.code = e.code;
  if (e.retriable !== undefined) out.retriable = e.retriable;
  if (e.cause !== undefined) out.cause = serializeError(e.cause);
  if (process.env.OUTBOXD_LOG_STACKS === '1' && err.stack) out.stack = redact(err.stack);
  return out;
}
