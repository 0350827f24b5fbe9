import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { CountingHistogram } from '../../src/observability/counting-histogram.js';

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** The same histogram twice: prom-client's own, and the counting one, each in its own registry. */
function pair() {
  const plain = new Registry();
  const counting = new Registry();
  for (const r of [plain, counting]) r.setDefaultLabels({ shard: '1' });
  const cfg = { name: 'outboxd_commit_to_ack_seconds', help: 'Time from commit to confirm.', buckets: BUCKETS };
  const a = new Histogram({ ...cfg, registers: [plain] });
  const b = new CountingHistogram({ ...cfg, registers: [counting] });
  return {
    observe: (v: number) => {
      a.observe(v);
      b.observe(v);
    },
    reset: () => {
      a.reset();
      b.reset();
    },
    b,
    same: async () => {
      expect(await counting.metrics()).toBe(await plain.metrics());
      expect(await counting.getMetricsAsJSON()).toEqual(await plain.getMetricsAsJSON());
    },
  };
}

describe('CountingHistogram', () => {
  it('exports what prom-client’s Histogram exports for the same observations, byte for byte', async () => {
    const h = pair();
    await h.same();
    // On every bound, just over each, between, zero, above the last bound, and many of one value.
    const values = [0, ...BUCKETS, ...BUCKETS.map((b) => b + 1e-9), 0.0003, 0.7, 299.99, 300.5, 1e6];
    for (const v of values) h.observe(v);
    for (let i = 0; i < 10_000; i++) h.observe((i % 97) / 1000);
    await h.same();
    // Scraped twice: nothing is counted twice.
    await h.same();
    h.observe(0.02);
    await h.same();
  });

  it('starts again from nothing after reset(), as prom-client’s does', async () => {
    const h = pair();
    for (let i = 0; i < 100; i++) h.observe(i / 10);
    await h.same();
    h.reset();
    await h.same();
    h.observe(0.3);
    await h.same();
  });

  it('refuses what is not a number, as prom-client does', () => {
    const { b } = pair();
    expect(() => b.observe(Number.NaN)).toThrow(TypeError);
    expect(() => b.observe(Number.POSITIVE_INFINITY)).toThrow(TypeError);
  });
});
