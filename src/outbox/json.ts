/**
 * A strict JSON scanner (RFC 8259) that never re-serialises: it reports where each member of a
 * top-level object sits in the source text, so the data path can hand on the exact text that
 * was written. `JSON.parse` then `JSON.stringify` would change numbers (`12345678901234567891`
 * becomes `12345678901234567000`, `1.10` becomes `1.1`), key order of duplicates, escapes and
 * whitespace; the scanner changes nothing.
 *
 * Iterative, so a deeply nested value cannot overflow the stack. Pure, no I/O.
 */

export type JsonKind = 'string' | 'number' | 'true' | 'false' | 'null' | 'object' | 'array';

/** A value's place in the source: `text.slice(start, end)` is exactly its JSON text. */
export interface JsonSpan {
  readonly kind: JsonKind;
  readonly start: number;
  readonly end: number;
}

/** The text is not JSON, or not the shape asked for. `at` is the offending character's index. */
export class JsonSyntaxError extends Error {
  constructor(
    message: string,
    readonly at: number,
  ) {
    super(`${message} at position ${at}`);
  }
}

/** A string value that holds an unpaired UTF-16 surrogate (`"\ud800"`): it has no UTF-8 form. */
export class LoneSurrogateError extends Error {}

/**
 * Scans `text`, which must be exactly one JSON object (surrounding whitespace allowed), and
 * returns its members by key, in order. A key that appears twice is an error: which of the two a
 * consumer would see depends on its parser, so the event is ambiguous.
 */
export function scanObject(text: string): Map<string, JsonSpan> {
  let i = skipWs(text, 0);
  if (text.charCodeAt(i) !== 0x7b /* { */) throw new JsonSyntaxError(i >= text.length ? 'empty input' : 'expected a JSON object', i);
  const members = new Map<string, JsonSpan>();
  i = skipWs(text, i + 1);
  if (text.charCodeAt(i) === 0x7d /* } */) return end(text, i + 1, members);
  for (;;) {
    if (text.charCodeAt(i) !== 0x22) throw new JsonSyntaxError('expected a string key', i);
    const keyEnd = skipString(text, i);
    const key = unescapeString(text, i, keyEnd);
    if (members.has(key)) throw new JsonSyntaxError(`duplicate key "${key.slice(0, 64)}"`, i);
    i = skipWs(text, keyEnd);
    if (text.charCodeAt(i) !== 0x3a /* : */) throw new JsonSyntaxError('expected ":"', i);
    const start = skipWs(text, i + 1);
    const valueEnd = skipValue(text, start);
    members.set(key, { kind: kindAt(text, start), start, end: valueEnd });
    i = skipWs(text, valueEnd);
    const c = text.charCodeAt(i);
    if (c === 0x2c /* , */) {
      i = skipWs(text, i + 1);
      continue;
    }
    if (c === 0x7d) return end(text, i + 1, members);
    throw new JsonSyntaxError('expected "," or "}"', i);
  }
}

function end(text: string, i: number, members: Map<string, JsonSpan>): Map<string, JsonSpan> {
  const j = skipWs(text, i);
  if (j !== text.length) throw new JsonSyntaxError('unexpected text after the object', j);
  return members;
}

/** True when `text` is exactly one JSON value (surrounding whitespace allowed). */
export function isJson(text: string): boolean {
  try {
    const start = skipWs(text, 0);
    return skipWs(text, skipValue(text, start)) === text.length;
  } catch (err) {
    if (err instanceof JsonSyntaxError) return false;
    throw err;
  }
}

/**
 * The value a string span stands for, its escapes resolved. Exact: every JSON string has one
 * value. Throws LoneSurrogateError for a value that UTF-8 cannot carry.
 */
export function unescapeString(text: string, start: number, end: number): string {
  const inner = text.slice(start + 1, end - 1);
  if (!inner.includes('\\')) return inner;
  let out = '';
  let i = 0;
  while (i < inner.length) {
    const bs = inner.indexOf('\\', i);
    if (bs < 0) {
      out += inner.slice(i);
      break;
    }
    out += inner.slice(i, bs);
    const e = inner.charCodeAt(bs + 1);
    i = bs + 2;
    switch (e) {
      case 0x22:
        out += '"';
        break;
      case 0x5c:
        out += '\\';
        break;
      case 0x2f:
        out += '/';
        break;
      case 0x62:
        out += '\b';
        break;
      case 0x66:
        out += '\f';
        break;
      case 0x6e:
        out += '\n';
        break;
      case 0x72:
        out += '\r';
        break;
      case 0x74:
        out += '\t';
        break;
      default: {
        // 'u': validated by skipString
        const unit = Number.parseInt(inner.slice(i, i + 4), 16);
        i += 4;
        if (unit >= 0xd800 && unit <= 0xdbff) {
          const low = inner.startsWith('\\u', i) ? Number.parseInt(inner.slice(i + 2, i + 6), 16) : -1;
          if (low < 0xdc00 || low > 0xdfff) throw new LoneSurrogateError('a string holds an unpaired UTF-16 surrogate (\\u escape)');
          out += String.fromCharCode(unit, low);
          i += 6;
        } else if (unit >= 0xdc00 && unit <= 0xdfff) {
          throw new LoneSurrogateError('a string holds an unpaired UTF-16 surrogate (\\u escape)');
        } else {
          out += String.fromCharCode(unit);
        }
      }
    }
  }
  return out;
}

function kindAt(text: string, i: number): JsonKind {
  switch (text.charCodeAt(i)) {
    case 0x22:
      return 'string';
    case 0x7b:
      return 'object';
    case 0x5b:
      return 'array';
    case 0x74:
      return 'true';
    case 0x66:
      return 'false';
    case 0x6e:
      return 'null';
    default:
      return 'number';
  }
}

function skipWs(text: string, i: number): number {
  for (;;) {
    const c = text.charCodeAt(i);
    if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) i++;
    else return i;
  }
}

/** Index just after the string that starts at `i` (a '"'). Validates escapes and control characters. */
function skipString(text: string, i: number): number {
  const n = text.length;
  i++;
  while (i < n) {
    const c = text.charCodeAt(i);
    if (c === 0x22) return i + 1;
    if (c < 0x20) throw new JsonSyntaxError('control character in a string', i);
    if (c === 0x5c) {
      const e = text.charCodeAt(i + 1);
      if (e === 0x75 /* u */) {
        if (!/^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) throw new JsonSyntaxError('bad \\u escape', i);
        i += 6;
        continue;
      }
      if (e !== 0x22 && e !== 0x5c && e !== 0x2f && e !== 0x62 && e !== 0x66 && e !== 0x6e && e !== 0x72 && e !== 0x74) {
        throw new JsonSyntaxError('bad escape', i);
      }
      i += 2;
      continue;
    }
    i++;
  }
  throw new JsonSyntaxError('unterminated string', n);
}

const NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;

function skipNumber(text: string, i: number): number {
  NUMBER.lastIndex = i;
  if (!NUMBER.test(text)) throw new JsonSyntaxError('unexpected character', i);
  const j = NUMBER.lastIndex;
  // A number must end at a delimiter: "01" or "1x" are not JSON.
  const c = text.charCodeAt(j);
  if (j < text.length && !(c === 0x2c || c === 0x7d || c === 0x5d || c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09)) {
    throw new JsonSyntaxError('bad number', j);
  }
  return j;
}

function skipLiteral(text: string, i: number, word: string): number {
  if (!text.startsWith(word, i)) throw new JsonSyntaxError('unexpected character', i);
  return i + word.length;
}

/** Index just after the value that starts at `i`. Validates it whole, nesting included. */
function skipValue(text: string, i: number): number {
  // Open containers, innermost last: true for an object, false for an array.
  const open: boolean[] = [];
  for (;;) {
    i = skipWs(text, i);
    const c = text.charCodeAt(i);
    // A value.
    if (c === 0x7b || c === 0x5b) {
      const isObject = c === 0x7b;
      open.push(isObject);
      i = skipWs(text, i + 1);
      if (text.charCodeAt(i) === (isObject ? 0x7d : 0x5d)) {
        open.pop();
        i++;
      } else {
        if (isObject) i = memberKey(text, i);
        continue;
      }
    } else if (c === 0x22) i = skipString(text, i);
    else if (c === 0x74) i = skipLiteral(text, i, 'true');
    else if (c === 0x66) i = skipLiteral(text, i, 'false');
    else if (c === 0x6e) i = skipLiteral(text, i, 'null');
    else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) i = skipNumber(text, i);
    else throw new JsonSyntaxError(i >= text.length ? 'unexpected end' : 'unexpected character', i);
    // After a value: close containers, or go on to the next element.
    for (;;) {
      if (open.length === 0) return i;
      i = skipWs(text, i);
      const d = text.charCodeAt(i);
      const isObject = open[open.length - 1] as boolean;
      if (d === 0x2c) {
        i = skipWs(text, i + 1);
        if (isObject) i = memberKey(text, i);
        break;
      }
      if (d === (isObject ? 0x7d : 0x5d)) {
        open.pop();
        i++;
        continue;
      }
      throw new JsonSyntaxError(`expected "," or "${isObject ? '}' : ']'}"`, i);
    }
  }
}

/** Skips `"key" :` inside an object; returns the index of the value. */
function memberKey(text: string, i: number): number {
  if (text.charCodeAt(i) !== 0x22) throw new JsonSyntaxError('expected a string key', i);
  i = skipWs(text, skipString(text, i));
  if (text.charCodeAt(i) !== 0x3a) throw new JsonSyntaxError('expected ":"', i);
  return i + 1;
}
