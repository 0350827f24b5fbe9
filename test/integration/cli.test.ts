import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { MAIN } from './support.js';

/** The CLI as a user runs it: exit codes and one-line errors that name the YAML path. */
const dir = mkdtempSync(join(tmpdir(), 'outboxd-cli-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function outboxd(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function validate(yaml: string, env: NodeJS.ProcessEnv = {}) {
  const file = join(dir, `c${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(file, yaml);
  return outboxd(['validate', '-c', file], env);
}

describe('outboxd validate', () => {
  it('accepts a valid config and says so on one line', () => {
    const r = validate('postgres:\n  url: postgres://u:${PW}@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [k:9092]\n', { PW: 'pw' });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^ok: .* is valid \(sink kafka, 1 table\(s\), slot outboxd\)\n$/);
  });

  const bad: Array<[string, string, string]> = [
    ['unknown key', 'postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    broker: [k:9092]\n', 'sink.kafka.broker'],
    ['wrong type', 'postgres:\n  url: postgres://u@h/db\npipeline:\n  batchMaxMessages: many\n', 'pipeline.batchMaxMessages'],
    ['missing env', 'postgres:\n  url: ${NOPE:?set the database URL}\n', 'postgres.url'],
    ['bad duration', 'postgres:\n  url: postgres://u@h/db\nshutdown:\n  grace: 30\n', 'shutdown.grace'],
    ['bad sink', 'postgres:\n  url: postgres://u@h/db\nsink:\n  type: kinesis\n', 'sink.type'],
  ];
  for (const [what, yaml, path] of bad) {
    it(`rejects a config with ${what}: exit 3, one line naming ${path}`, () => {
      const r = validate(yaml);
      expect(r.code).toBe(3);
      expect(r.stdout).toBe('');
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(new RegExp(`^outboxd: config ${path.replace(/[.[\]]/g, '\\$&')}: `));
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    });
  }

  it('never echoes a password from the URL in an error', () => {
    const r = validate('postgres:\n  url: postgres://u:hunter2@h/db\n  slot: BAD\n');
    expect(r.code).toBe(3);
    expect(r.stderr).not.toContain('hunter2');
  });

  it('reports a missing file and bad usage with distinct exit codes', () => {
    expect(outboxd(['validate', '-c', join(dir, 'missing.yaml')]).code).toBe(3);
    const usage = outboxd(['validate', '--bogus']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/unknown argument "--bogus"/);
    expect(outboxd(['frobnicate', '-c', 'x']).code).toBe(2);
    expect(outboxd(['--version']).stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });
});
