const t0 = performance.now();

/** Progress lines on stderr, prefixed with the time since start; stdout carries the result table. */
export function note(message: string): void {
  const s = ((performance.now() - t0) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[bench ${s}s] ${message}\n`);
}

export { sleep } from '../../test/harness/wait.js';
