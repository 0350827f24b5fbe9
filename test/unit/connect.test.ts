import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { type OutboxdError, PgConnectionError } from '../../src/errors.js';
import { connectAdmin } from '../../src/source/connect.js';
import { getFreePort } from '../harness/ports.js';

/** Host choice when no host answers: nothing listens on the ports (loopback, refused at once). */
describe('connecting to a multi-host postgres.url', () => {
  it('tries every host in order, then fails retriably with one line naming each host and why', async () => {
    const [a, b] = [await getFreePort(), await getFreePort()];
    const cfg = parseConfig(
      `postgres:\n  url: postgres://u:pw-S3cret@127.0.0.1:${a},127.0.0.1:${b}/db?target_session_attrs=read-write\n  connectTimeout: 2s\n`,
      {},
    );
    const err = await connectAdmin(cfg.postgres).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PgConnectionError);
    expect((err as OutboxdError).retriable).toBe(true);
    expect((err as Error).message).toMatch(
      new RegExp(
        `^connecting to Postgres: no host of postgres.url fits target_session_attrs=read-write \\(127\\.0\\.0\\.1:${a}: connect ECONNREFUSED 127\\.0\\.0\\.1:${a}; 127\\.0\\.0\\.1:${b}: connect ECONNREFUSED 127\\.0\\.0\\.1:${b}\\)$`,
      ),
    );
  });

  it('a single host keeps the error it always had', async () => {
    const port = await getFreePort();
    const cfg = parseConfig(`postgres:\n  url: postgres://u@127.0.0.1:${port}/db\n  connectTimeout: 2s\n`, {});
    await expect(connectAdmin(cfg.postgres)).rejects.toThrow(`connecting to Postgres: connect ECONNREFUSED 127.0.0.1:${port}`);
  });
});
