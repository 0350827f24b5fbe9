import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, removeDir } from './support.js';

/**
 * `npm test` (scripts/test.sh) installs what the suite needs first. What it cannot install stops
 * it at once, with one line that names what is missing and how to install it, before any check
 * or test runs.
 */
describe('npm test prerequisites', () => {
  it('a prerequisite that cannot be installed stops npm test at once with one line naming it and its install command', () => {
    const cache = mkdtempSync(join(tmpdir(), 'outboxd-prereqs-'));
    try {
      const env = {
        // A RabbitMQ that is not there.
        PATH: `${dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
        HOME: cache,
        OUTBOXD_CACHE: cache,
        OUTBOXD_RABBITMQ_HOME: join(cache, 'no-rabbitmq'),
      };
      // apt-get can install for root only: run as an unprivileged user when we are root.
      // (runuser resets PATH, so the environment goes through env.) That user may not be able to
      // read the checkout (a clone under /root, or in a 0700 temporary directory): it runs a
      // world-readable copy of scripts/, which is all that runs before the missing package stops it.
      const root = process.getuid?.() === 0;
      let repo = ROOT;
      if (root) {
        repo = join(cache, 'repo');
        cpSync(join(ROOT, 'scripts'), join(repo, 'scripts'), { recursive: true });
        for (const dir of [cache, repo, join(repo, 'scripts'), join(repo, 'scripts', 'lib')]) chmodSync(dir, 0o755);
      }
      const asUser = root ? ['runuser', '-u', 'nobody', '--'] : [];
      const command = [...asUser, 'env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), 'bash', join(repo, 'scripts/test.sh')];
      const r = spawnSync(command[0] as string, command.slice(1), {
        cwd: repo,
        env,
        encoding: 'utf8',
        timeout: 60_000,
      });
      expect(r.status).toBe(1);
      expect(r.stdout).toBe('');
      const lines = r.stderr.trimEnd().split('\n');
      expect(lines).toEqual([
        `outboxd prereqs: ${join(cache, 'no-rabbitmq')}/bin/rabbitmq-server is missing: install it with \`sudo apt-get install -y rabbitmq-server\` (or its equivalent on this system)`,
      ]);
    } finally {
      removeDir(cache);
    }
  });
});
