/**
 * Summarises node --cpu-prof output: `node …/bench/profile.js FILE_OR_DIR [TOP]`.
 * (npm run bench with BENCH_PROFILE=1 writes profiles to bench/results/<stamp>-profiles/.)
 */
import { statSync } from 'node:fs';
import { profileReport, summarizeProfile, summarizeProfiles } from './lib/profile.js';

const target = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (!target) {
  process.stderr.write('usage: profile.js FILE.cpuprofile|DIR [TOP]\n');
  process.exit(2);
}
process.stdout.write(`${statSync(target).isDirectory() ? summarizeProfiles(target, top) : profileReport(summarizeProfile(target), top)}\n`);
