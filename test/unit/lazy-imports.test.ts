import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * An import rule a refactor can break without any test of behaviour noticing: the CLI loads a
 * broker's client library only for the sink it runs, so nothing the CLI imports statically may
 * load kafkajs or amqplib (kafkajs loads only through its door's loader, sink/kafka/kafkajs-internals.ts:
 * test/unit/kafkajs-door.test.ts).
 */
const SRC = resolve(import.meta.dirname, '../../src');

/** The modules a source file imports for their values (not `import type`), as resolved paths or package names. */
function valueImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^import\s+(?!type\b)(?:[^'"]*?\sfrom\s+)?['"]([^'"]+)['"]/gm)) {
    const spec = m[1] as string;
    out.push(spec.startsWith('.') ? resolve(dirname(file), spec.replace(/\.js$/, '.ts')) : spec);
  }
  return out;
}

describe('imports', () => {
  it('the CLI loads no broker client library until a command needs it', () => {
    const reached = new Set<string>();
    const walk = (file: string) => {
      if (reached.has(file)) return;
      reached.add(file);
      for (const i of valueImports(file)) if (i.startsWith(SRC)) walk(i);
    };
    walk(join(SRC, 'main.ts'));
    const door = join(SRC, 'sink/kafka/kafkajs-internals.ts');
    const loaders = [...reached].filter((f) => f === door || valueImports(f).some((i) => i === 'kafkajs' || i === 'amqplib'));
    expect(loaders.map((f) => f.slice(SRC.length + 1))).toEqual([]);
  });
});
