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

/** Every module of src/ and every package that loading `file` loads. */
function reachedFrom(file: string): Set<string> {
  const reached = new Set<string>();
  const walk = (f: string) => {
    if (reached.has(f)) return;
    reached.add(f);
    for (const i of valueImports(f)) {
      if (i.startsWith(SRC)) walk(i);
      else reached.add(i);
    }
  };
  walk(file);
  return reached;
}

describe('imports', () => {
  it('a Kafka worker thread loads neither the config schema nor its library (about 20 MiB per thread)', () => {
    const reached = reachedFrom(join(SRC, 'sink/kafka/worker-thread.ts'));
    expect(reached.has(join(SRC, 'sink/kafka/client.ts'))).toBe(true);
    expect([...reached].filter((f) => f === join(SRC, 'config/schema.ts') || f.startsWith('@sinclair/typebox'))).toEqual([]);
  });

  it('the CLI loads no broker client library until a command needs it', () => {
    const reached = reachedFrom(join(SRC, 'main.ts'));
    const door = join(SRC, 'sink/kafka/kafkajs-internals.ts');
    const files = [...reached].filter((f) => f.startsWith(SRC));
    const loaders = files.filter((f) => f === door || valueImports(f).some((i) => i === 'kafkajs' || i === 'amqplib'));
    expect(loaders.map((f) => f.slice(SRC.length + 1))).toEqual([]);
  });
});
