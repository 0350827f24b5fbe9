import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { parsePgUrl } from '../../src/config/pg-url.js';
import { ConfigError } from '../../src/errors.js';
import { clearSecrets, redact } from '../../src/redact.js';
import { clientConfig } from '../../src/source/connect.js';

afterEach(() => clearSecrets());

describe('parsePgUrl', () => {
  it('passes a single-host URL through untouched, target_session_attrs any by default', () => {
    const url = 'postgresql://u:p%40ss@db.internal:6432/app?sslmode=require&application_name=x';
    expect(parsePgUrl(url)).toEqual({
      hosts: [{ label: 'db.internal:6432', url }],
      targetSessionAttrs: 'any',
      password: 'p@ss',
    });
  });

  it('splits a multi-host URL into single-host URLs in the order written, every other part kept', () => {
    const p = parsePgUrl('postgres://u:pw@h1:5432,h2:5433,h3/db?target_session_attrs=read-write&sslmode=require');
    expect(p.targetSessionAttrs).toBe('read-write');
    expect(p.hosts).toEqual([
      { label: 'h1:5432', url: 'postgres://u:pw@h1:5432/db?target_session_attrs=read-write&sslmode=require' },
      { label: 'h2:5433', url: 'postgres://u:pw@h2:5433/db?target_session_attrs=read-write&sslmode=require' },
      { label: 'h3:5432', url: 'postgres://u:pw@h3/db?target_session_attrs=read-write&sslmode=require' },
    ]);
  });

  it('keeps a raw @ in the password and IPv6 hosts in brackets', () => {
    const p = parsePgUrl('postgres://u:p@ss@[::1]:5432,[fe80::2]:5433/db');
    expect(p.password).toBe('p@ss');
    expect(p.hosts.map((h) => h.label)).toEqual(['[::1]:5432', '[fe80::2]:5433']);
    expect(p.hosts[1]?.url).toBe('postgres://u:p@ss@[fe80::2]:5433/db');
  });

  it('accepts every libpq target_session_attrs value and names them when one is wrong', () => {
    for (const v of ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby']) {
      expect(parsePgUrl(`postgres://h1,h2/db?target_session_attrs=${v}`).targetSessionAttrs).toBe(v);
    }
    expect(() => parsePgUrl('postgres://h1,h2/db?target_session_attrs=master')).toThrow(
      'target_session_attrs must be one of any, read-write, read-only, primary, standby, prefer-standby, got "master"',
    );
  });

  it('refuses an empty host in the list, a bad port, and hosts also given as parameters', () => {
    expect(() => parsePgUrl('postgres://h1,,h3/db')).toThrow('host 2 of the list is empty');
    expect(() => parsePgUrl('postgres://h1,h2:notaport/db')).toThrow('host 2 of the list ("h2:notaport") is not a valid host[:port]');
    expect(() => parsePgUrl('postgres://h1,h2/db?port=5433')).toThrow(/several hosts .* host, hostaddr or port as parameters/);
    expect(() => parsePgUrl('mysql://h/db')).toThrow('must be a postgres:// or postgresql:// URL');
  });
});

describe('postgres.url with several hosts', () => {
  it('compiles, and each host gets the password override', () => {
    const cfg = parseConfig(
      'postgres:\n  url: postgres://u:old@h1:5432,h2:5433/db?target_session_attrs=read-write\n  password: n3w-secret\n',
      {},
    );
    expect(cfg.postgres.hosts.map((h) => h.label)).toEqual(['h1:5432', 'h2:5433']);
    expect(cfg.postgres.targetSessionAttrs).toBe('read-write');
    expect(clientConfig(cfg.postgres, cfg.postgres.hosts[1]).connectionString).toBe(
      'postgres://u:n3w-secret@h2:5433/db?target_session_attrs=read-write',
    );
  });

  it('a bad list is a config error naming postgres.url', () => {
    let err: unknown;
    try {
      parseConfig('postgres:\n  url: postgres://h1,/db\n', {});
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toBe('config postgres.url: host 2 of the list is empty');
  });

  it('registers the password for redaction, so it never leaves the process', () => {
    parseConfig('postgres:\n  url: postgres://u:mh-S3cret@h1,h2/db\n', {});
    expect(redact('auth failed for mh-S3cret at h2')).toBe('auth failed for *** at h2');
    expect(redact('postgres://u:mh-S3cret@h1:5432,h2:5433/db')).toBe('postgres://u:***@h1:5432,h2:5433/db');
  });
});
