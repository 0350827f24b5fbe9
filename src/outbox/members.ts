import { isUtf8 } from 'node:buffer';
import { PoisonError } from '../errors.js';
import { setOwn } from '../own.js';
import { type JsonSpan, JsonSyntaxError, LoneSurrogateError, scanObject, unescapeString } from './json.js';

/**
 * The members of a JSON object (a logical message, a headers column) as the text the outbox
 * carries: a scalar's exact text, a headers object's members by name. Pure, no I/O; anything
 * that cannot be carried exactly throws a PoisonError naming the reason.
 */

/**
 * A scalar member as text: a string's value, or a number's or boolean's JSON text with every
 * digit. null and absent are null. An object or array is not a scalar: poison.
 */
export function scalarField(text: string, members: ReadonlyMap<string, JsonSpan>, name: string, what: string): string | null {
  const span = members.get(name);
  if (span === undefined || span.kind === 'null') return null;
  if (span.kind === 'string') return stringValue(text, span, name);
  if (span.kind === 'object' || span.kind === 'array') {
    throw new PoisonError('bad_message', `${what} ${name} must be a string or a number, not an ${span.kind}`);
  }
  return text.slice(span.start, span.end);
}

/**
 * The key (`aggregateid`) of a logical message's content, as the mapper would read it; null when
 * the content has none or cannot be read (such a message is poison, reported by shard 0 alone).
 */
export function messageKey(content: Buffer): string | null {
  // As the mapper reads it (fromLogicalMessage): not UTF-8 is poison there, so no key here.
  if (!isUtf8(content)) return null;
  try {
    const text = content.toString('utf8');
    return scalarField(text, scanObject(text), 'aggregateid', 'logical message field');
  } catch {
    return null;
  }
}

export function stringValue(text: string, span: JsonSpan, name: string): string {
  try {
    return unescapeString(text, span.start, span.end);
  } catch (err) {
    if (err instanceof LoneSurrogateError) throw new PoisonError('bad_encoding', `${name}: ${err.message}; it has no UTF-8 form`);
    throw err;
  }
}

/** The `headers` column: a JSON object whose members become headers, each value its exact text. */
export function parseHeadersColumn(text: string | null, column: string): Record<string, string> | null {
  if (text === null || text === '') return null;
  return headersFromSpan(text, { kind: 'object', start: 0, end: text.length }, `column ${column} (headers)`);
}

/**
 * A headers object: a string member becomes its value, a number or boolean its JSON text with
 * every digit, a nested object or array its JSON text as written; a null member is left out.
 */
export function headersFromSpan(text: string, span: JsonSpan, what: string): Record<string, string> {
  if (span.kind !== 'object') throw new PoisonError('bad_headers', `${what} must be a JSON object, not ${span.kind}`);
  let members: Map<string, JsonSpan>;
  try {
    members = scanObject(text.slice(span.start, span.end));
  } catch (err) {
    if (err instanceof JsonSyntaxError) throw new PoisonError('bad_headers', `${what} is not a JSON object: ${err.message}`);
    if (err instanceof LoneSurrogateError) throw new PoisonError('bad_encoding', `${what}: ${err.message}`);
    throw err;
  }
  const inner = text.slice(span.start, span.end);
  const out: Record<string, string> = {};
  for (const [k, v] of members) {
    if (v.kind === 'null') continue;
    setOwn(out, k, v.kind === 'string' ? stringValue(inner, v, `header ${k}`) : inner.slice(v.start, v.end));
  }
  return out;
}
