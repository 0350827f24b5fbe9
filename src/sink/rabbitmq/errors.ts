import { SinkError } from '../../errors.js';

/** AMQP reply codes after which retrying cannot help (the channel was closed by the broker). */
const FATAL_REPLY_CODES = new Set([403, 404, 406, 530, 540]);

/**
 * The AMQP reply code behind an amqplib error: `code` when the broker closed a channel or the
 * connection, or parsed from the text of a refused handshake, which amqplib reports without one
 * ("Handshake terminated by server: 403 (ACCESS-REFUSED) with message ...").
 */
function replyCode(err: unknown): number | undefined {
  const e = err as { code?: unknown; message?: unknown };
  if (typeof e?.code === 'number') return e.code;
  const m = /^Handshake terminated by server: (\d{3}) /.exec(typeof e?.message === 'string' ? e.message : '');
  return m ? Number(m[1]) : undefined;
}

/**
 * Wraps an amqplib error. Only a reply code from the broker makes an error fatal: refused
 * credentials (403), a channel closed for a missing or mismatched exchange (404, 406), and the
 * like. Everything at the socket level (refused, reset, timed out) and a vhost the broker will
 * not open (see below) is retriable.
 */
export function classifyAmqpError(err: unknown, doing: string, vhost?: string): SinkError {
  if (err instanceof SinkError) return err;
  const text = (err as Error)?.message ?? String(err);
  const message = `${doing}: ${text}`;
  if (/^Expected ConnectionOpenOk; got <ConnectionClose/.test(text)) {
    // amqplib drops the reply of a refused Connection.Open: 530 for a vhost that does not exist
    // or that the user may not use, 541 for one that is down while the broker boots. The last
    // mends itself, so all three are retried (the relay stays unready and says why).
    return new SinkError(
      'vhost_refused',
      `${doing}: RabbitMQ refused to open vhost "${vhost ?? '?'}": it does not exist, the user has no access to it, or it is down`,
      { retriable: true, cause: err },
    );
  }
  const code = replyCode(err);
  if (code === 403) {
    return new SinkError('access_refused', `${message} (check the credentials and vhost permissions)`, { retriable: false, cause: err });
  }
  if (code !== undefined && FATAL_REPLY_CODES.has(code)) return new SinkError(`amqp_${code}`, message, { retriable: false, cause: err });
  if (/nack/i.test(text)) return new SinkError('nack', message, { retriable: true, cause: err });
  const sys = (err as { code?: unknown })?.code;
  return new SinkError(typeof sys === 'string' ? sys : 'connection', message, { retriable: true, cause: err });
}
