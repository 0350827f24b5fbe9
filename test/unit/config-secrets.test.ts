import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ConfigSchema } from '../../src/config/schema.js';
import { ConfigError, oneLine } from '../../src/errors.js';
import { clearSecrets } from '../../src/redact.js';

/**
 * A config error prints the value it refused. The value may be a secret: written where a secret
 * is expected but of the wrong type, or a secret's `${VAR}` pasted into the wrong key. What the
 * CLI prints (oneLine) must never hold it.
 */
const dir = mkdtempSync(join(tmpdir(), 'outboxd-config-secrets-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => clearSecrets());

const PG = 'postgres:\n  url: postgres://relay@db/app\n';

/** What the CLI prints for the config, which must be refused. */
function printed(yaml: string, env: NodeJS.ProcessEnv = {}): string {
  try {
    parseConfig(yaml, env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return oneLine(err);
  }
  throw new Error('expected a ConfigError');
}

describe('config errors and secrets', () => {
  it('refuses a secret that YAML read as a number or a boolean, naming the key and not the value', () => {
    const kafka = `${PG}sink:\n  type: kafka\n  kafka:\n    brokers: [k:9092]\n    sasl:\n      mechanism: plain\n      username: u\n`;
    // YAML 1.2 reads 0012345678 as the number 12345678: not the password that was written.
    const out = printed(`${kafka}      password: 0012345678\n`);
    expect(out).toBe(
      'config sink.kafka.sasl.password: must be text; YAML read this secret as a number, which may not be what was written: quote it',
    );
    expect(out).not.toMatch(/12345678/);
    expect(printed(`postgres:\n  url: postgres://relay@db/app\n  password: true\n`)).toBe(
      'config postgres.password: must be text; YAML read this secret as true or false, which may not be what was written: quote it',
    );
    // Quoted, it is the text as written.
    const cfg = parseConfig(`${kafka}      password: "0012345678"\n`, {});
    expect(cfg.sink.type === 'kafka' && cfg.sink.kafka.sasl?.mechanism === 'plain' && cfg.sink.kafka.sasl.password).toBe('0012345678');
  });

  it("masks a secret's ${VAR} pasted into a key of another type", () => {
    const out = printed(`postgres:\n  url: postgres://relay@db/app\n  password: \${PGPASSWORD}\nhttp:\n  port: \${PGPASSWORD}\n`, {
      PGPASSWORD: 'Pg-S3cret-Value',
    });
    expect(out).toBe('config http.port: must be an integer, got "***"');
  });

  it('masks a URL password in a value the error shortens', () => {
    const url = 'postgres://relay:A-Long-S3cret-Password-Of-Many-Words@db.example.com:5432/app';
    const out = printed('postgres: ${DATABASE_URL}\n', { DATABASE_URL: url });
    expect(out).toBe('config postgres: must be a mapping, got "postgres://relay:***@db.example.com:5432…"');
    expect(out).not.toMatch(/S3cret|A-Long/);
  });

  it('masks a secret read by ${file:…} wherever an error shows it', () => {
    const secret = join(dir, 'secret');
    writeFileSync(secret, 'File-S3cret-Value\n');
    const out = printed(`${PG}log:\n  level: \${file:${secret}}\n`);
    expect(out).toBe('config log.level: must be one of fatal, error, warn, info, debug, trace, silent, got "***"');
  });

  it('masks the secret of a …File key in an error that comes after it is read', () => {
    const secret = join(dir, 'pg-password');
    writeFileSync(secret, 'Pg-F1le-Secret\n');
    // The file's password pasted into a template: the error quotes the template.
    const out = printed(
      `postgres:\n  url: postgres://relay@db/app\n  passwordFile: ${secret}\nsink:\n  cloudevents:\n    source: "Pg-F1le-Secret {"\n`,
    );
    expect(out).toMatch(/^config sink\.cloudevents\.source: /);
    expect(out).not.toContain('Pg-F1le-Secret');
  });

  it('marks every key named for a password, passphrase or secret as secret in the schema', () => {
    const unmarked: string[] = [];
    const walk = (s: TSchema, path: string): void => {
      const key = path.split('.').at(-1) ?? '';
      if (/pass(word|phrase)|secret/i.test(key) && s['x-secret'] === undefined) unmarked.push(path);
      if (s.type === 'object') for (const [k, c] of Object.entries(s.properties as Record<string, TSchema>)) walk(c, `${path}.${k}`);
      if (s.type === 'array') walk(s.items as TSchema, path);
      for (const a of (s.anyOf as TSchema[] | undefined) ?? []) if (a.type === 'object') walk(a, path);
    };
    walk(ConfigSchema, 'config');
    expect(unmarked).toEqual([]);
  });
});
