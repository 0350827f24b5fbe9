import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';
import type { AdminConnection } from '../../src/source/admin.js';
import { SlotMonitor } from '../../src/source/monitor.js';

function monitor(progressTimeout: string) {
  const cfg = parseConfig(
    `postgres:\n  url: postgres://u@h/db\n  progressTimeout: ${progressTimeout}\noutbox:\n  tables:\n    - name: public.outbox\n`,
    {},
  );
  const metrics = createMetrics();
  const events: Array<[boolean, number]> = [];
  const m = new SlotMonitor(cfg.postgres, {} as AdminConnection, metrics, createLogger('silent'), (stuck, ms) => events.push([stuck, ms]));
  const gauge = async (name: string) => (await metrics.registry.getSingleMetric(name)?.get())?.values[0]?.value;
  return { m, events, gauge };
}

describe('progress watchdog (SlotMonitor.watch)', () => {
  it('stuck once the confirmed position stands still for progressTimeout while WAL is ahead; clear when it moves', async () => {
    const { m, events, gauge } = monitor('60s');
    m.watch(100n, 500, 0);
    m.watch(100n, 900, 30_000);
    expect(events).toEqual([]);
    expect(await gauge('outboxd_confirmed_unchanged_seconds')).toBe(30);
    m.watch(100n, 1_500, 60_000);
    expect(events).toEqual([[true, 60_000]]);
    m.watch(100n, 2_000, 70_000);
    expect(events.at(-1)).toEqual([true, 70_000]);
    m.watch(200n, 1_800, 71_000);
    expect(events.at(-1)).toEqual([false, 0]);
    expect(await gauge('outboxd_confirmed_unchanged_seconds')).toBe(0);
  });

  it('a caught-up slot (WAL not ahead) is never stuck, however long its position stays', () => {
    const { m, events } = monitor('60s');
    for (let t = 0; t <= 600_000; t += 10_000) m.watch(100n, 0, t);
    expect(events).toEqual([]);
  });

  it('progressTimeout 0 disables it', () => {
    const { m, events } = monitor('0s');
    for (let t = 0; t <= 600_000; t += 10_000) m.watch(100n, 5_000, t);
    expect(events).toEqual([]);
  });

  it('stopping (no longer leader) clears it', () => {
    const { m, events } = monitor('10s');
    m.watch(100n, 5_000, 0);
    m.watch(100n, 5_000, 10_000);
    expect(events).toEqual([[true, 10_000]]);
    m.stop();
    expect(events.at(-1)?.[0]).toBe(false);
  });
});
