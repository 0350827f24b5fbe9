import { describe, expect, it } from 'vitest';
import { PoisonError, type PoisonReason } from '../../src/errors.js';
import type { DeadLetter } from '../../src/interfaces.js';
import { DEAD_LETTER_FALLBACK_ROUTING_KEY, ROUTING_KEY_FALLBACK_HEADER, amqpDeadLetter } from '../../src/sink/rabbitmq/dead-letter.js';
import { amqpLimitProblem } from '../../src/sink/rabbitmq/limits.js';
import { DEAD_LETTER_VALUE_MAX_BYTES, deadLetterForms, formBytes } from '../../src/sink/dead-letter.js';
import { deadLetterCandidates, RECORD_OVERHEAD_BYTES } from '../../src/sink/kafka/client.js';

/**
 * A dead letter must always be publishable: whatever the poison message held (an id, key,
 * destination or header too long for the broker, which is often why it is poison), its dead
 * letter fits every AMQP limit, and its smallest form is small enough for any Kafka broker.
 */

function letter(over: Partial<DeadLetter> = {}, reason: PoisonReason = 'field_too_long'): DeadLetter {
  return {
    id: 'id-1',
    key: 'k',
    destination: 'orders.created',
    payload: '{"a":1}',
    contentType: 'application/json',
    headers: { id: 'id-1', type: 'created' },
    error: new PoisonError(reason, 'x'.repeat(5_000)),
    txn: { xid: 7, commitLsn: 0x1_0000_0010n, commitTimeMs: 1_700_000_000_000, lsnText: '1/10', xidText: '7' },
    index: 0,
    ...over,
  };
}

const RABBIT = { deadLetterRoutingKey: null, maxMessageBytes: 16 * 1024 * 1024 };
const MiB = 1024 * 1024;

/** Poison messages built to break each limit a dead letter copies from its message. */
const hostile: Array<[string, Partial<DeadLetter>]> = [
  ['a 300-byte routing key (a 300-byte type under {aggregatetype}.{type})', { destination: `orders.${'t'.repeat(300)}` }],
  ['a 70 KB routing key', { destination: 'd'.repeat(70_000) }],
  ['a 300-byte id', { id: 'i'.repeat(300), headers: { id: 'i'.repeat(300) } }],
  ['a 70 KB id', { id: 'i'.repeat(70_000), headers: { id: 'i'.repeat(70_000) } }],
  ['a 70 KB multi-byte id', { id: 'é'.repeat(35_000), headers: { id: 'é'.repeat(35_000) } }],
  ['a 70 KB key', { key: 'k'.repeat(70_000) }],
  ['an id and a key of 40 KB each', { id: 'i'.repeat(40_000), key: 'k'.repeat(40_000), headers: { id: 'i'.repeat(40_000) } }],
  ['a header name over 255 bytes', { headers: { ['h'.repeat(300)]: 'v' } }],
  ['a header table over 64 KiB', { headers: { big: 'h'.repeat(70_000) } }],
  ['a content type over 255 bytes', { contentType: `application/${'x'.repeat(300)}` }],
  ['a payload over maxMessageBytes', { payload: 'p'.repeat(17 * MiB) }],
  [
    'everything at once',
    {
      id: 'i'.repeat(70_000),
      key: 'k'.repeat(70_000),
      destination: 'd'.repeat(70_000),
      headers: { ['h'.repeat(300)]: 'v', big: 'h'.repeat(70_000) },
      contentType: 'c'.repeat(300),
      payload: Buffer.alloc(17 * MiB),
    },
  ],
];

describe('amqpDeadLetter', () => {
  for (const [name, over] of hostile) {
    it(`a message with ${name} gives a dead letter within every AMQP limit`, () => {
      const l = letter(over);
      const d = amqpDeadLetter(l, RABBIT);
      expect(amqpLimitProblem(d.routingKey, d.props)).toBeNull();
      expect(d.props.headers?.['outboxd.error_reason']).toBe('field_too_long');
      expect(d.props.headers?.['outboxd.xid']).toBe('7');
    });
  }

  it('keeps the message’s own routing key when it fits, with no fallback header', () => {
    const d = amqpDeadLetter(letter(), RABBIT);
    expect(d.routingKey).toBe('orders.created');
    expect(d.props.headers?.[ROUTING_KEY_FALLBACK_HEADER]).toBeUndefined();
    expect(d.form.shrunk).toBe('none');
  });

  it('falls back to the fixed key when the message’s own is over 255 bytes, says why, and keeps the original destination', () => {
    const destination = `orders.${'t'.repeat(300)}`;
    const d = amqpDeadLetter(letter({ destination }), RABBIT);
    expect(d.routingKey).toBe(DEAD_LETTER_FALLBACK_ROUTING_KEY);
    expect(d.props.headers?.[ROUTING_KEY_FALLBACK_HEADER]).toBe(
      "the message's own routing key: AMQP routing key is 307 bytes; AMQP allows at most 255",
    );
    expect(d.props.headers?.['outboxd.original_destination']).toBe(destination);
  });

  it('falls back when the configured deadLetterRoutingKey is over 255 bytes, and names the setting', () => {
    const d = amqpDeadLetter(letter(), { ...RABBIT, deadLetterRoutingKey: 'r'.repeat(256) });
    expect(d.routingKey).toBe(DEAD_LETTER_FALLBACK_ROUTING_KEY);
    expect(d.props.headers?.[ROUTING_KEY_FALLBACK_HEADER]).toMatch(/^sink\.rabbitmq\.deadLetterRoutingKey: .*256 bytes/);
  });

  it('uses the fixed key, without a fallback header, for a letter that has no destination', () => {
    const d = amqpDeadLetter(letter({ destination: null }), RABBIT);
    expect(d.routingKey).toBe(DEAD_LETTER_FALLBACK_ROUTING_KEY);
    expect(d.props.headers?.[ROUTING_KEY_FALLBACK_HEADER]).toBeUndefined();
  });

  it('leaves out an original destination too long for the header table, and says so', () => {
    const d = amqpDeadLetter(letter({ destination: 'd'.repeat(70_000) }), RABBIT);
    expect(d.props.headers?.['outboxd.original_destination']).toBeUndefined();
    expect(d.props.headers?.['outboxd.dead_letter_shrunk']).toBe('payload,headers,original_destination');
  });

  it('a 70 KB id: the message id property falls back, the id header is left out and named', () => {
    const id = 'i'.repeat(70_000);
    const d = amqpDeadLetter(letter({ id, headers: { id } }), RABBIT);
    expect(d.props.messageId).toBe('poison-7-1/10');
    expect(d.props.headers?.id).toBeUndefined();
    expect(d.props.headers?.['outboxd.dead_letter_shrunk']).toBe('payload,headers,id');
  });

  it('a 300-byte id stays in the id header, only the message id property falls back', () => {
    const id = 'i'.repeat(300);
    const d = amqpDeadLetter(letter({ id, headers: { id } }), RABBIT);
    expect(d.props.messageId).toBe('poison-7-1/10');
    expect(d.props.headers?.id).toBe(id);
    expect(d.form.shrunk).toBe('none');
  });

  it('a key that fits is the aggregateid header; one that does not is left out and named', () => {
    expect(amqpDeadLetter(letter(), RABBIT).props.headers?.aggregateid).toBe('k');
    const d = amqpDeadLetter(letter({ key: 'k'.repeat(70_000) }), RABBIT);
    expect(d.props.headers?.aggregateid).toBeUndefined();
    expect(d.props.headers?.['outboxd.dead_letter_shrunk']).toBe('payload,headers,key');
  });
});

describe('deadLetterForms', () => {
  it('adds a smallest form only when the id, key or destination is over the bound, and bounds every value in it', () => {
    expect(deadLetterForms(letter()).map((f) => f.shrunk)).toEqual(['none', 'payload', 'payload,headers']);
    const big = 'x'.repeat(DEAD_LETTER_VALUE_MAX_BYTES + 1);
    const forms = deadLetterForms(letter({ id: big, key: big, destination: big }));
    const smallest = forms.at(-1);
    expect(smallest?.shrunk).toBe('payload,headers,id,key,original_destination');
    expect(smallest?.key).toBeNull();
    for (const v of Object.values(smallest?.headers ?? {})) expect(Buffer.byteLength(v)).toBeLessThanOrEqual(4 * 1024);
  });

  it('keeps a value of exactly the bound in the smallest form', () => {
    const edge = 'x'.repeat(DEAD_LETTER_VALUE_MAX_BYTES);
    const forms = deadLetterForms(letter({ id: edge, key: edge, destination: edge }));
    expect(forms.at(-1)?.shrunk).toBe('payload,headers');
    expect(forms.at(-1)?.key).toBe(edge);
  });

  it('puts a sink’s extra headers into every form', () => {
    for (const f of deadLetterForms(letter({ key: 'k'.repeat(5_000) }), { 'outboxd.x': 'y' })) expect(f.headers['outboxd.x']).toBe('y');
  });
});

describe('deadLetterCandidates (Kafka)', () => {
  it('a key near the message limit: only the smallest form is tried, and it carries no key', () => {
    const forms = deadLetterCandidates(letter({ key: 'k'.repeat(MiB - 64) }, 'oversized'), MiB);
    expect(forms).toHaveLength(1);
    expect(forms[0]?.key).toBeNull();
    expect(forms[0]?.shrunk).toBe('payload,headers,key');
    expect(formBytes(forms[0] as (typeof forms)[number]) + RECORD_OVERHEAD_BYTES).toBeLessThan(8 * 1024);
  });

  it('an id and a key that each fit but not together: the smallest form leaves both out', () => {
    const forms = deadLetterCandidates(
      letter({ id: 'i'.repeat(600_000), key: 'k'.repeat(600_000), headers: { id: 'i'.repeat(600_000) } }, 'oversized'),
      MiB,
    );
    const last = forms.at(-1);
    expect(last?.shrunk).toBe('payload,headers,id,key');
    expect(formBytes(last as (typeof forms)[number])).toBeLessThan(8 * 1024);
  });

  it('counts the key against the limit', () => {
    // Form 2 (no payload) fits without the key, not with it.
    const forms = deadLetterCandidates(letter({ key: 'k'.repeat(900), payload: 'p'.repeat(3_000) }, 'oversized'), 2_048);
    expect(forms.map((f) => f.shrunk)).toEqual(['payload,headers']);
  });
});
