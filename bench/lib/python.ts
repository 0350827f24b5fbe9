import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { note } from './log.js';

/**
 * A Python with confluent-kafka (librdkafka), for the latency scenario's consumer: a process of
 * its own, on a client other than the relay's. Installed once from PyPI into a venv under
 * ~/.cache/outboxd; null (with the reason noted) where Python or PyPI is not there.
 */
export const CONFLUENT_KAFKA = '2.16.1';

export function rdkafkaPython(): string | null {
  const venv = join(homedir(), '.cache', 'outboxd', `bench-python-confluent-kafka-${CONFLUENT_KAFKA}`);
  const python = join(venv, 'bin', 'python');
  if (existsSync(join(venv, '.complete'))) return python;
  try {
    execFileSync('python3', ['-m', 'venv', venv], { stdio: 'pipe' });
    execFileSync(python, ['-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', `confluent-kafka==${CONFLUENT_KAFKA}`], {
      stdio: 'pipe',
      timeout: 300_000,
    });
    execFileSync(python, ['-c', 'import confluent_kafka'], { stdio: 'pipe' });
    execFileSync('touch', [join(venv, '.complete')]);
    return python;
  } catch (err) {
    note(
      `latency: no librdkafka consumer (python3 -m venv + pip install confluent-kafka==${CONFLUENT_KAFKA} failed: ${String((err as Error).message).split('\n')[0]}); using kafkajs in-process`,
    );
    return null;
  }
}
