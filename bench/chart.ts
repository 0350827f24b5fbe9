/**
 * Regenerates the shape chart from a results file: `node …/bench/chart.js RESULTS.json OUT.svg`.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import type { ShapeCell } from './lib/summary.js';
import { shapeSvg } from './lib/svg.js';

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  process.stderr.write('usage: chart.js RESULTS.json OUT.svg\n');
  process.exit(2);
}
const doc = JSON.parse(readFileSync(input, 'utf8')) as {
  startedAt: string;
  host: { cpus: number };
  services: { postgres: string };
  summary: { shape?: ShapeCell[] };
};
const cells = doc.summary.shape ?? [];
if (cells.length === 0) {
  process.stderr.write(`${input} has no shape results\n`);
  process.exit(1);
}
writeFileSync(output, shapeSvg(cells, `${doc.host.cpus} cores, Postgres ${doc.services.postgres}, ${doc.startedAt.slice(0, 10)}`));
process.stdout.write(`wrote ${output}\n`);
