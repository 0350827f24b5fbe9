import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where things are. The bench is compiled (bench/tsconfig.json) into node_modules/.cache, so
 * paths are found from the repository root, not from the compiled file's location.
 */
function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'src', 'app.ts'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('bench: cannot find the outboxd repository root');
    dir = up;
  }
}

export const ROOT = findRoot();
export const DIST = join(ROOT, 'dist');
export const MAIN = join(DIST, 'main.js');
/** The compiled bench/ directory (…/outboxd-bench/bench). */
export const BENCH_BUILD = dirname(dirname(fileURLToPath(import.meta.url)));
export const RESULTS_DIR = join(ROOT, 'bench', 'results');
export const CHARTS_DIR = join(ROOT, 'bench', 'charts');

/** A compiled bench entry point, e.g. child('children/discard-relay.js'). */
export function benchFile(rel: string): string {
  return join(BENCH_BUILD, rel);
}
