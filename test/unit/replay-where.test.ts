import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { parseWhere, whereSql } from '../../src/replay/where.js';

/** `replay --where`: only whitelisted shapes parse, and values only ever become parameters. */

const COLUMNS = new Map([
  ['aggregatetype', 'aggregatetype'],
  ['aggregateid', 'aggregateid'],
  ['type', 'event_type'],
  ['created_at', 'created_at'],
  ['Mixed Case', '"Mixed Case"'],
]);
const resolve = (c: string): string => {
  const r = COLUMNS.get(c);
  if (r === undefined) throw new UsageError(`--where: unknown column "${c}"`);
  return r;
};
const sql = (text: string, first = 1) => whereSql(parseWhere(text), resolve, first);

function usageError(text: string): string {
  try {
    sql(text);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`parsed: ${text}`);
}

describe('replay --where parser', () => {
  it('turns a comparison into a quoted column, the operator and a parameter', () => {
    expect(sql("aggregatetype = 'order'")).toEqual({ sql: 'aggregatetype = $1', params: ['order'] });
    expect(sql("type != 'x'", 3)).toEqual({ sql: 'event_type <> $3', params: ['x'] });
  });

  it('accepts every whitelisted operator, IN lists, IS [NOT] NULL, joined by AND in any case', () => {
    expect(
      sql("aggregatetype <> 'a' and aggregateid < 'b' AND aggregateid <= 'c' And type > 'd' AND type >= 'e' AND created_at IS NOT NULL"),
    ).toEqual({
      sql: 'aggregatetype <> $1 AND aggregateid < $2 AND aggregateid <= $3 AND event_type > $4 AND event_type >= $5 AND created_at IS NOT NULL',
      params: ['a', 'b', 'c', 'd', 'e'],
    });
    expect(sql("aggregatetype in ('order', 'customer') AND type is null")).toEqual({
      sql: 'aggregatetype IN ($1, $2) AND event_type IS NULL',
      params: ['order', 'customer'],
    });
  });

  it('keeps string values exactly, quotes doubled, and numbers as written (every digit)', () => {
    expect(sql("aggregateid = 'O''Brien; DROP TABLE outbox; --'").params).toEqual(["O'Brien; DROP TABLE outbox; --"]);
    expect(sql('aggregateid = 12345678901234567890.000100e-3').params).toEqual(['12345678901234567890.000100e-3']);
    expect(sql('aggregateid > -5').params).toEqual(['-5']);
    expect(sql("aggregateid = 'unicode ✓ 🎉'").params).toEqual(['unicode ✓ 🎉']);
  });

  it('folds unquoted column names to lower case and keeps quoted ones as written', () => {
    expect(sql("AggregateType = 'x'").sql).toBe('aggregatetype = $1');
    expect(sql('"Mixed Case" IS NULL').sql).toBe('"Mixed Case" IS NULL');
  });

  it('refuses a column that is not mapped, naming it', () => {
    expect(usageError("payload_secret = 'x'")).toBe('--where: unknown column "payload_secret"');
    // A quoted identifier is looked up as written, so quoting cannot smuggle SQL in.
    expect(usageError(`"aggregatetype = 'x' OR 1=1 --" IS NULL`)).toMatch(/unknown column/);
  });

  const attacks: Array<[string, string, RegExp]> = [
    ['a statement after a semicolon', "aggregatetype = 'x'; DROP TABLE outbox", /unexpected character ";" at position 20/],
    ['a line comment', "aggregatetype = 'x' -- AND 1=1", /unexpected character "-" at position 21/],
    ['a block comment', "aggregatetype = 'x' /* */", /unexpected character "\/" at position 21/],
    ['OR', "aggregatetype = 'x' OR 1=1", /expected AND or the end, found "OR" \(only AND is supported\) at position 21/],
    ['a tautology without a column', '1 = 1', /expected a column name, found "1" at position 1/],
    ['an unbalanced quote', "aggregatetype = 'x", /unterminated string starting at position 17/],
    ['an unbalanced quote that swallows the rest', "aggregatetype = 'x'' OR ''1'='1", /unterminated string/],
    ['a function call as the column', "lower(aggregatetype) = 'x'", /expected an operator .* found "\(" at position 6/],
    ['a function call as the value', 'aggregatetype = pg_sleep(10)', /expected a value .* found "pg_sleep" at position 17/],
    ['a subquery in IN', 'aggregatetype IN (SELECT aggregatetype FROM outbox)', /expected a value .* found "SELECT" at position 19/],
    ['a parenthesised expression', "(aggregatetype = 'x')", /expected a column name, found "\(" at position 1/],
    ['a cast', "aggregatetype = 'x'::text", /unexpected character ":" at position 20/],
    ['a column compared with a column', 'aggregatetype = aggregateid', /expected a value .* found "aggregateid"/],
    ['NOT before a condition', "NOT aggregatetype = 'x'", /expected a column name, found "NOT"/],
    ['IS with something other than NULL', 'aggregatetype IS TRUE', /expected NULL or NOT NULL after IS, found "TRUE"/],
    ['an empty IN list', 'aggregatetype IN ()', /expected a value .* found "\)"/],
    ['an unclosed IN list', "aggregatetype IN ('a'", /expected "," or "\)" in the IN list, found the end/],
    ['a dangling AND', "aggregatetype = 'x' AND", /expected a column name, found the end at position 24/],
    ['a missing value', 'aggregatetype =', /expected a value .* found the end at position 16/],
    ['a number glued to a word', 'aggregateid = 1e5x', /malformed number at position 15/],
    ['an empty expression', '   ', /empty expression at position 1/],
    ['a dollar-quoted string', 'aggregatetype = $$x$$', /unexpected character "\$" at position 17/],
    ['a positional parameter', 'aggregatetype = $1', /unexpected character "\$"/],
    ['an E-string escape', "aggregatetype = E'\\x27'", /expected a value .* found "E"/],
  ];
  for (const [what, text, message] of attacks) {
    it(`refuses ${what}, naming where`, () => {
      const m = usageError(text);
      expect(m).toMatch(/^--where: /);
      expect(m).toMatch(message);
      expect(m).not.toContain('\n');
    });
  }
});
