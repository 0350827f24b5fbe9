import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/**
 * The shape of src/ (docs/architecture.md): its rooms from the ground floor up, imports only
 * sideways or down (type-only imports included), no circles between files, no file over 350
 * lines, app.ts under 200. A change that breaks one of these fails here, not in a review.
 */

const SRC = join(dirname(fileURLToPath(import.meta.url)), '../../src');

/** The rooms from the ground floor up; a file may import only from its own room or one listed before it. */
const FLOORS = [
  ['lsn.ts', 'own.ts', 'version.ts', 'redact.ts', 'errors.ts', 'interfaces.ts', 'runtime.ts'],
  ['config'],
  ['retry.ts'],
  ['observability'],
  ['positions'],
  ['postgres'],
  ['source'],
  ['outbox'],
  ['sink'],
  ['pipeline'],
  ['replay'],
  ['lifecycle'],
  ['app.ts'],
  ['commands'],
  ['cli.ts'],
  ['main.ts'],
];

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

/** Every relative module a file imports (static, type-only, re-exports, dynamic import()). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(
    /(?:^|\s)(?:import|export)\s[^'"]*?from\s*['"](\.{1,2}\/[^'"]+)['"]|import\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g,
  )) {
    const spec = (m[1] ?? m[2]) as string;
    out.push(normalize(join(dirname(file), spec.replace(/\.js$/, '.ts'))));
  }
  return out;
}

const room = (file: string) => relative(SRC, file).split('/')[0] as string;
const floorOf = (r: string) => FLOORS.findIndex((f) => f.includes(r));
const all = files(SRC);

describe('the house (src/)', () => {
  it('every file belongs to a room of the plan', () => {
    expect(all.map(room).filter((r) => floorOf(r) < 0)).toEqual([]);
  });

  it('no import runs upward: a room imports only from its own floor or those below', () => {
    const upward: string[] = [];
    for (const f of all)
      for (const t of importsOf(f)) if (floorOf(room(t)) > floorOf(room(f))) upward.push(`${relative(SRC, f)} -> ${relative(SRC, t)}`);
    expect(upward).toEqual([]);
  });

  it('no import circles between files (type-only imports count)', () => {
    const graph = new Map(all.map((f) => [f, importsOf(f).filter((t) => all.includes(t))]));
    const circles: string[] = [];
    const state = new Map<string, 'open' | 'done'>();
    const path: string[] = [];
    const visit = (f: string) => {
      state.set(f, 'open');
      path.push(f);
      for (const t of graph.get(f) ?? []) {
        if (state.get(t) === 'open')
          circles.push(
            path
              .slice(path.indexOf(t))
              .concat(t)
              .map((p) => relative(SRC, p))
              .join(' -> '),
          );
        else if (!state.has(t)) visit(t);
      }
      path.pop();
      state.set(f, 'done');
    };
    for (const f of all) if (!state.has(f)) visit(f);
    expect(circles).toEqual([]);
  });

  it('no file over 350 lines, and app.ts under 200', () => {
    const lines = (f: string) => readFileSync(f, 'utf8').split('\n').length - 1;
    expect(all.filter((f) => lines(f) > 350).map((f) => `${relative(SRC, f)} (${lines(f)})`)).toEqual([]);
    expect(lines(join(SRC, 'app.ts'))).toBeLessThan(200);
  });
});
