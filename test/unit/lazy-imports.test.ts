import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Two import rules a refactor can break without any test of behaviour noticing, only the
 * benchmark (a Kafka drain 0.81× as fast, found on 2026-11-30):
 * - kafkajs-speedups patches kafkajs as kafkajs loads: every module that loads kafkajs must
 *   import it first, or kafkajs loads unpatched and the relay is slower;
 * - the CLI loads a broker's client library only for the sink it runs: nothing the CLI imports
 *   statically may load kafkajs or amqplib.
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
  it('every module that loads kafkajs imports kafkajs-speedups first', () => {
    const speedups = join(SRC, 'sink/kafkajs-speedups.ts');
    const offenders: string[] = [];
    const seen = new Set<string>();
    const walk = (file: string) => {
      if (seen.has(file)) return;
      seen.add(file);
      const imports = valueImports(file);
      const k = imports.indexOf('kafkajs');
      if (k >= 0 && file !== speedups && imports[0] !== speedups) offenders.push(file.slice(SRC.length + 1));
      for (const i of imports) if (i.startsWith(SRC)) walk(i);
    };
    for (const entry of [
      'main.ts',
      'sink/kafka.ts',
      'sink/kafka-exactly-once.ts',
      'sink/kafka-worker-thread.ts',
      'commands/validate-kafka-auth.ts',
    ])
      walk(join(SRC, entry));
    expect(offenders).toEqual([]);
  });

  it('the CLI loads no broker client library until a command needs it', () => {
    const reached = new Set<string>();
    const walk = (file: string) => {
      if (reached.has(file)) return;
      reached.add(file);
      for (const i of valueImports(file)) if (i.startsWith(SRC)) walk(i);
    };
    walk(join(SRC, 'main.ts'));
    const loaders = [...reached].filter((f) => valueImports(f).some((i) => i === 'kafkajs' || i === 'amqplib'));
    expect(loaders.map((f) => f.slice(SRC.length + 1))).toEqual([]);
  });
});
