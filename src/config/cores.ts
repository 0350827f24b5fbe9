import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/**
 * The cores this process may use: the CPUs it may run on (affinity, cpusets), bounded by a
 * cgroup CPU quota (a container's CPU limit), which Node's availableParallelism() does not read.
 * A container limited to 1 CPU on a 16-core host has 1, not 16.
 */
export function usableCores(): number {
  const cpus = availableParallelism();
  const quota = cgroupQuota();
  return quota === null ? cpus : Math.max(1, Math.min(cpus, Math.ceil(quota)));
}

/** CPUs allowed by the cgroup's quota (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), or null for none. */
function cgroupQuota(): number | null {
  const v2 = read('/sys/fs/cgroup/cpu.max');
  if (v2 !== null) {
    const [quota, period] = v2.trim().split(/\s+/);
    if (quota === undefined || quota === 'max' || period === undefined) return null;
    const q = Number(quota) / Number(period);
    return Number.isFinite(q) && q > 0 ? q : null;
  }
  const quota = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_quota_us'));
  const period = Number(read('/sys/fs/cgroup/cpu/cpu.cfs_period_us'));
  if (!(quota > 0) || !(period > 0)) return null;
  return quota / period;
}

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/**
 * The most workers the default gives, whatever the machine (docs/adr/0010, decision 6). One main
 * thread decodes, maps and encodes for every worker, and it is the ceiling: measured with one
 * worker, the main thread spent 4.4 s of CPU on a 1M-row drain and the worker 2.5-3.2 s, so one
 * worker already sends faster than the main thread encodes. A second one overlaps round trips to
 * another broker; more add about 80 MB each and no speed. Set `sink.kafka.workers` to go higher.
 */
export const MAX_DEFAULT_KAFKA_WORKERS = 2;

/**
 * Kafka publishing workers by default (docs/adr/0010): one core for the main thread (decoding,
 * mapping, encoding) and one for what runs beside it on the database host (the walsender serving
 * it); the rest publish, up to MAX_DEFAULT_KAFKA_WORKERS. On 2 cores that is 0: measured, a worker
 * there adds memory and no speed. A worker starts only once a partition it owns gets a message, so
 * no more workers run than partitions written to (sink/kafka/workers.ts).
 */
export function defaultKafkaWorkers(cores = usableCores()): number {
  return Math.min(MAX_DEFAULT_KAFKA_WORKERS, Math.max(0, cores - 2));
}
