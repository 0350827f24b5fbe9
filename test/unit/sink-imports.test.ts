import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * The sink sits below the pipeline: it publishes what it is given and knows nothing of who
 * drives it. No file under src/sink imports (types included) from the rooms above it.
 */
const SRC = resolve(import.meta.dirname, '../../src');
const ABOVE = ['pipeline/', 'replay/', 'commands/', 'source/', 'app.ts', 'cli.ts', 'main.ts'];

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

describe('sink imports', () => {
  it('no file under src/sink imports from a room above the sink', () => {
    const upward: string[] = [];
    for (const file of files(join(SRC, 'sink'))) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|^\s*import\s+)['"](\.[^'"]+)['"]/gm)) {
        const target = relative(SRC, resolve(dirname(file), m[1] as string)).replace(/\.js$/, '.ts');
        if (ABOVE.some((a) => target === a || target.startsWith(a))) upward.push(`${relative(SRC, file)} -> ${target}`);
      }
    }
    expect(upward).toEqual([]);
  });
});
