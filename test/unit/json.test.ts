import { describe, expect, it } from 'vitest';
import { isJson, JsonSyntaxError, LoneSurrogateError, scanObject, unescapeString } from '../../src/outbox/json.js';

describe('json scanner', () => {
  it('reports each member of an object as the exact text written', () => {
    const text = ' { "a" : 1.10 , "b":[1, {"c": "}"}], "c": "x\\"y", "d": null, "e": true, "f": -0e+5 } ';
    const m = scanObject(text);
    const slice = (k: string) => {
      const s = m.get(k);
      return s && text.slice(s.start, s.end);
    };
    expect([...m.keys()]).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    expect(slice('a')).toBe('1.10');
    expect(slice('b')).toBe('[1, {"c": "}"}]');
    expect(slice('c')).toBe('"x\\"y"');
    expect(m.get('c')?.kind).toBe('string');
    expect(m.get('d')?.kind).toBe('null');
    expect(slice('f')).toBe('-0e+5');
  });

  it('accepts what JSON.parse accepts and refuses what it refuses', () => {
    const samples = [
      '1',
      '-0',
      '01',
      '1.',
      '.5',
      '1e',
      '1e+',
      '-',
      '"a',
      '"\\x"',
      '"\\u12"',
      '"\\u12G4"',
      '"tab\there"',
      '[1,]',
      '[,1]',
      '{"a":1,}',
      '{"a" 1}',
      '{a:1}',
      '{"a":1}}',
      '[[[]]]',
      '[1 2]',
      'tru',
      'true false',
      'nul',
      '{"a":[{"b":{"c":[true,false,null,"\\u00e9\\ud83d\\ude00"]}}]}',
      '  \n{"k":"v"}\t',
      '\u00a0{}',
      '{"":""}',
      '"\u2028"',
      '[1e400, -1.5E-7, 0.0]',
    ];
    for (const s of samples) {
      let ok = true;
      try {
        JSON.parse(s);
      } catch {
        ok = false;
      }
      expect(isJson(s), s).toBe(ok);
    }
  });

  it('scans a deeply nested value without overflowing the stack', () => {
    const deep = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
    expect(isJson(deep)).toBe(true);
    expect(scanObject(`{"x":${deep}}`).get('x')?.end).toBe(5 + deep.length);
  });

  it('refuses a duplicate key and anything but one object', () => {
    expect(() => scanObject('{"a":1,"a":2}')).toThrow(/duplicate key "a"/);
    expect(() => scanObject('[1]')).toThrow(JsonSyntaxError);
    expect(() => scanObject('{} {}')).toThrow(/after the object/);
    expect(() => scanObject('')).toThrow(/empty input/);
  });

  it('unescapes strings exactly and refuses unpaired surrogates', () => {
    const u = (s: string) => unescapeString(s, 0, s.length);
    expect(u('"a\\nb\\u0041\\/\\\\"')).toBe('a\nbA/\\');
    expect(u('"\\ud83d\\ude00"')).toBe('😀');
    expect(() => u('"\\ud83d"')).toThrow(LoneSurrogateError);
    expect(() => u('"\\ude00x"')).toThrow(LoneSurrogateError);
    expect(() => u('"\\ud83d\\u0041"')).toThrow(LoneSurrogateError);
  });
});
