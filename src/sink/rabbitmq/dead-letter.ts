import type amqp from 'amqplib';
import type { RabbitMqSinkConfig } from '../../config/config.js';
import { SinkError } from '../../errors.js';
import type { DeadLetter } from '../../interfaces.js';
import { LSN_HEADER } from '../../outbox/position-headers.js';
import { amqpLimitProblem, SHORTSTR_MAX_BYTES } from './limits.js';
import { type DeadLetterForm, deadLetterForms, formBytes } from '../dead-letter.js';

/**
 * The routing key of a dead letter whose own cannot be used: one without a destination (a row
 * that could not be mapped), or whose routing key breaks an AMQP limit (a shortstr: at most 255
 * bytes). Fixed, so that a queue bound to it (or to `#`) receives every such letter.
 */
export const DEAD_LETTER_FALLBACK_ROUTING_KEY = 'poison';

/**
 * Set on a dead letter sent under DEAD_LETTER_FALLBACK_ROUTING_KEY although it had a routing key
 * (sink.rabbitmq.deadLetterRoutingKey, or its message's own): why that key could not be used.
 * The message's own destination stays in `outboxd.original_destination` when it fits.
 */
export const ROUTING_KEY_FALLBACK_HEADER = 'outboxd.dead_letter_routing_key_fallback';

/** A dead letter ready for `ConfirmChannel.publish` on the dead-letter exchange. */
export interface AmqpDeadLetter {
  readonly routingKey: string;
  readonly body: Buffer;
  readonly props: amqp.Options.Publish & { messageId: string };
  readonly form: DeadLetterForm;
}

/**
 * The dead letter as RabbitMQ gets it: its routing key, and the largest form (dead-letter.ts)
 * within `maxMessageBytes` and every AMQP limit. Publishable by construction, whatever the
 * poison message held, so that a poison message can never stop the relay under `dead-letter`:
 * - the routing key falls back to DEAD_LETTER_FALLBACK_ROUTING_KEY when the wanted one breaks an
 *   AMQP limit (ROUTING_KEY_FALLBACK_HEADER says why);
 * - the message id property falls back to `poison-<xid>-<lsn>` when the id is missing or over
 *   255 bytes (the `id` header keeps it when it fits the header table);
 * - the content type is left out if over 255 bytes; the other properties are outboxd's own;
 * - the header names of the smallest forms are outboxd's own, and their values are bounded, so
 *   their header table is a few KiB.
 * Throws only if that reasoning is wrong (a bug), naming the limit, rather than hand amqplib a
 * publish it would throw on or cut short.
 */
export function amqpDeadLetter(
  letter: DeadLetter,
  cfg: Pick<RabbitMqSinkConfig, 'deadLetterRoutingKey' | 'maxMessageBytes'>,
): AmqpDeadLetter {
  const wanted = cfg.deadLetterRoutingKey ?? letter.destination;
  let routingKey = wanted ?? DEAD_LETTER_FALLBACK_ROUTING_KEY;
  const extra: Record<string, string> = {};
  if (wanted !== null) {
    const problem = amqpLimitProblem(wanted, {});
    if (problem !== null) {
      routingKey = DEAD_LETTER_FALLBACK_ROUTING_KEY;
      const whose = cfg.deadLetterRoutingKey !== null ? 'sink.rabbitmq.deadLetterRoutingKey' : "the message's own routing key";
      extra[ROUTING_KEY_FALLBACK_HEADER] = `${whose}: ${problem.message}`;
    }
  }
  const forms = deadLetterForms(letter, extra);
  const fitsShortstr = (s: string) => s.length <= SHORTSTR_MAX_BYTES / 3 || Buffer.byteLength(s) <= SHORTSTR_MAX_BYTES;
  const propsOf = (f: DeadLetterForm): AmqpDeadLetter['props'] => ({
    persistent: true,
    mandatory: true,
    // An id too long for AMQP (perhaps why it is poison) stays in the id header only.
    messageId: letter.id !== null && fitsShortstr(letter.id) ? letter.id : `poison-${letter.txn.xid}-${f.headers[LSN_HEADER]}`,
    contentType: fitsShortstr(letter.contentType) ? letter.contentType : undefined,
    timestamp: Math.floor(letter.txn.commitTimeMs / 1000),
    appId: 'outboxd',
    headers: f.key === null ? f.headers : { ...f.headers, aggregateid: f.key },
  });
  for (const form of forms.slice(0, -1)) {
    if (formBytes(form) > cfg.maxMessageBytes) continue;
    const props = propsOf(form);
    if (amqpLimitProblem(routingKey, props) === null) return { routingKey, body: bodyOf(form), props, form };
  }
  const smallest = forms.at(-1) as DeadLetterForm;
  const props = propsOf(smallest);
  const problem = amqpLimitProblem(routingKey, props);
  if (problem !== null) {
    throw new SinkError(
      'dead_letter_refused',
      `the dead letter of message ${props.messageId.slice(0, 100)} breaks an AMQP limit even in its smallest form (a bug: please report it): ${problem.message}`,
      { retriable: false },
    );
  }
  return { routingKey, body: bodyOf(smallest), props, form: smallest };
}

function bodyOf(form: DeadLetterForm): Buffer {
  return typeof form.body === 'string' ? Buffer.from(form.body) : form.body;
}
