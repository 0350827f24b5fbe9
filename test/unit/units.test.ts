import { describe, expect, it } from 'vitest';
import { parseDurationMs, parseSizeBytes } from '../../src/config/units.js';
import { backoffMs } from '../../src/retry.js';

describe('units', () => {
  it('parses durations', () => {
    expect(parseDurationMs('500ms')).toBe(500);
    expect(parseDurationMs('10s')).toBe(10_000);
    expect(parseDurationMs('1.5m')).toBe(90_000);
    expect(parseDurationMs('2h')).toBe(7_200_000);
    expect(parseDurationMs('0')).toBe(0);
    for (const bad of ['10', '10 sec', '-1s', 's', '']) expect(parseDurationMs(bad)).toBeUndefined();
  });

  it('parses sizes', () => {
    expect(parseSizeBytes('64MiB')).toBe(64 * 1024 * 1024);
    expect(parseSizeBytes('1MB')).toBe(1_000_000);
    expect(parseSizeBytes('4096')).toBe(4096);
    for (const bad of ['1 TB', 'MiB', '-1KiB', '1mib']) expect(parseSizeBytes(bad)).toBeUndefined();
  });

  it('backs off exponentially with jitter, capped', () => {
    const cfg = { initialMs: 100, maxMs: 1000 };
    expect(backoffMs(1, cfg, () => 0)).toBe(50);
    expect(backoffMs(1, cfg, () => 1)).toBe(100);
    expect(backoffMs(3, cfg, () => 1)).toBe(400);
    expect(backoffMs(20, cfg, () => 1)).toBe(1000);
    expect(backoffMs(20, cfg, () => 0)).toBe(500);
  });
});

describe('default Kafka workers', () => {
  it('leave a core to the main thread and one to the walsender, and stay bounded on a big machine', async () => {
    const { defaultKafkaWorkers, usableCores } = await import('../../src/config/cores.js');
    expect([1, 2, 3, 4, 16, 64].map((c) => defaultKafkaWorkers(c))).toEqual([0, 0, 1, 2, 2, 2]);
    expect(usableCores()).toBeGreaterThanOrEqual(1);
  });
});
