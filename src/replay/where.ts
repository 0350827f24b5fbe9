import { UsageError } from '../errors.js';

/**
 * `replay --where`: a small, strict parser, so that the filter can never be an SQL injection path.
 * Nothing the user typed reaches the SQL text: a column is looked up in a whitelist and quoted, an
 * operator is one of a fixed set, and every value becomes a bind parameter.
 *
 * The accepted shapes, joined by AND only (keywords in any case):
 *   <column> <op> <literal>        op: = <> != < <= > >=
 *   <column> IN (<literal>, ...)
 *   <column> IS NULL | <column> IS NOT NULL
 * A column is an identifier (`aggregatetype`, or `"Mixed Case"` with "" for a quote); a literal is
 * a single-quoted string ('' for a quote) or a number, kept as written. Anything else (OR,
 * parentheses, comments, function calls, casts, a semicolon) is a usage error naming its position.
 */

export type WhereOp = '=' | '<>' | '<' | '<=' | '>' | '>=';

export type WhereCondition =
  | { readonly column: string; readonly op: WhereOp; readonly value: string }
  | { readonly column: string; readonly op: 'in'; readonly values: readonly string[] }
  | { readonly column: string; readonly op: 'is null' | 'is not null' };

type Token =
  | { kind: 'ident'; text: string; quoted: boolean; at: number }
  | { kind: 'string' | 'number'; text: string; at: number }
  | { kind: 'op'; text: WhereOp; at: number }
  | { kind: 'punct'; text: '(' | ')' | ','; at: number }
  | { kind: 'end'; at: number };

const OPERATORS: ReadonlyArray<readonly [string, WhereOp]> = [
  ['<>', '<>'],
  ['!=', '<>'],
  ['<=', '<='],
  ['>=', '>='],
  ['=', '='],
  ['<', '<'],
  ['>', '>'],
];

/** Positions in errors count from 1, like a cursor column. */
function fail(at: number, problem: string): never {
  throw new UsageError(`--where: ${problem} at position ${at + 1}`);
}

function describeToken(t: Token): string {
  if (t.kind === 'end') return 'the end';
  if (t.kind === 'string') return `'${t.text.replaceAll("'", "''")}'`;
  return `"${t.text}"`;
}

function tokenize(text: string): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  while (i < text.length) {
    const c = text[i] as string;
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    const at = i;
    if (/[A-Za-z_]/.test(c)) {
      const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(text.slice(i)) as RegExpExecArray;
      tokens.push({ kind: 'ident', text: m[0], quoted: false, at });
      i += m[0].length;
      continue;
    }
    if (c === '"' || c === "'") {
      // A quoted identifier or a string: the quote doubled stands for itself.
      let value = '';
      i++;
      for (;;) {
        if (i >= text.length) fail(at, `unterminated ${c === '"' ? 'quoted identifier' : 'string'} starting`);
        if (text[i] === c) {
          if (text[i + 1] === c) {
            value += c;
            i += 2;
            continue;
          }
          i++;
          break;
        }
        value += text[i];
        i++;
      }
      if (c === '"') {
        if (value === '') fail(at, 'empty quoted identifier');
        tokens.push({ kind: 'ident', text: value, quoted: true, at });
      } else tokens.push({ kind: 'string', text: value, at });
      continue;
    }
    const num = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/.exec(text.slice(i));
    if (num) {
      // A number glued to a letter (`1e`, `12abc`) is not a number.
      if (/[A-Za-z_]/.test(text[i + num[0].length] ?? '')) fail(at, 'malformed number');
      tokens.push({ kind: 'number', text: num[0], at });
      i += num[0].length;
      continue;
    }
    const op = OPERATORS.find(([s]) => text.startsWith(s, i));
    if (op) {
      tokens.push({ kind: 'op', text: op[1], at });
      i += op[0].length;
      continue;
    }
    if (c === '(' || c === ')' || c === ',') {
      tokens.push({ kind: 'punct', text: c, at });
      i++;
      continue;
    }
    fail(at, `unexpected character "${c}"`);
  }
  tokens.push({ kind: 'end', at: text.length });
  return tokens;
}

const isKeyword = (t: Token, word: string): boolean => t.kind === 'ident' && !t.quoted && t.text.toLowerCase() === word;

/** Parses a `--where` expression into conditions (ANDed). Throws UsageError naming the position. */
export function parseWhere(text: string): WhereCondition[] {
  const tokens = tokenize(text);
  let p = 0;
  const peek = () => tokens[p] as Token;
  const next = () => tokens[p++] as Token;
  const literal = (what: string): string => {
    const t = next();
    if (t.kind !== 'string' && t.kind !== 'number')
      fail(t.at, `expected ${what} (a 'quoted string' or a number), found ${describeToken(t)}`);
    return t.text;
  };
  const out: WhereCondition[] = [];
  if (peek().kind === 'end') fail(0, 'empty expression');
  for (;;) {
    const col = next();
    if (col.kind !== 'ident' || (!col.quoted && ['and', 'or', 'not', 'in', 'is', 'null'].includes(col.text.toLowerCase())))
      fail(col.at, `expected a column name, found ${describeToken(col)}`);
    // Unquoted identifiers fold to lower case, as in SQL.
    const column = col.quoted ? col.text : col.text.toLowerCase();
    const op = next();
    if (op.kind === 'op') out.push({ column, op: op.text, value: literal('a value') });
    else if (isKeyword(op, 'in')) {
      const open = next();
      if (open.kind !== 'punct' || open.text !== '(') fail(open.at, `expected "(" after IN, found ${describeToken(open)}`);
      const values = [literal('a value')];
      for (;;) {
        const sep = next();
        if (sep.kind === 'punct' && sep.text === ')') break;
        if (sep.kind !== 'punct' || sep.text !== ',') fail(sep.at, `expected "," or ")" in the IN list, found ${describeToken(sep)}`);
        values.push(literal('a value'));
      }
      out.push({ column, op: 'in', values });
    } else if (isKeyword(op, 'is')) {
      let t = next();
      const not = isKeyword(t, 'not');
      if (not) t = next();
      if (!isKeyword(t, 'null')) fail(t.at, `expected ${not ? 'NULL' : 'NULL or NOT NULL'} after IS, found ${describeToken(t)}`);
      out.push({ column, op: not ? 'is not null' : 'is null' });
    } else fail(op.at, `expected an operator (= <> != < <= > >= IN IS) after ${describeToken(col)}, found ${describeToken(op)}`);
    const joint = next();
    if (joint.kind === 'end') return out;
    if (!isKeyword(joint, 'and'))
      fail(joint.at, `expected AND or the end, found ${describeToken(joint)}${isKeyword(joint, 'or') ? ' (only AND is supported)' : ''}`);
  }
}

/**
 * The conditions as SQL over one table. `resolve` maps a column name as written to the table's
 * quoted column, and throws when it is not one the filter may use. Values become parameters from
 * `$${firstParam}` on. Returns the SQL (conditions joined by AND) and the parameters.
 */
export function whereSql(
  conditions: readonly WhereCondition[],
  resolve: (column: string) => string,
  firstParam: number,
): { sql: string; params: string[] } {
  const params: string[] = [];
  const param = (v: string) => {
    params.push(v);
    return `$${firstParam + params.length - 1}`;
  };
  const parts = conditions.map((c) => {
    const col = resolve(c.column);
    if ('values' in c) return `${col} IN (${c.values.map(param).join(', ')})`;
    if ('value' in c) return `${col} ${c.op} ${param(c.value)}`;
    return `${col} ${c.op.toUpperCase()}`;
  });
  return { sql: parts.join(' AND '), params };
}
