import { afterEach, describe, expect, it, vi } from 'vitest';
import { Liveness } from '../../src/observability/liveness.js';

afterEach(() => {
  vi.useRealTimers();
});

describe('Liveness', () => {
  it('fails a step that runs past its bound, and only that', async () => {
    vi.useFakeTimers();
    const l = new Liveness(10_000);
    let finish!: () => void;
    const step = l.step('creating the slot', 60_000, () => new Promise<void>((r) => (finish = r)));
    await vi.advanceTimersByTimeAsync(59_000);
    expect(l.check()).toEqual({ ok: true, detail: null });
    await vi.advanceTimersByTimeAsync(2_000);
    expect(l.check().ok).toBe(false);
    expect(l.check().detail).toBe('stuck: creating the slot has run for 61 s (bound 60 s)');
    finish();
    await step;
    expect(l.check().ok).toBe(true);
    l.stop();
  });

  it('fails while the event loop is blocked, and for a while after a long block', () => {
    let now = 0;
    const l = new Liveness(10_000, () => now);
    // No tick for 12 s: the loop is not turning.
    now = 12_000;
    expect(l.check()).toEqual({ ok: false, detail: 'the event loop has not turned for 12 s' });
    l.stop();
  });
});
