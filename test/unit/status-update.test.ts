import { describe, expect, it } from 'vitest';
import { standbyStatusUpdate } from '../../src/source/replication-protocol.js';

describe('standbyStatusUpdate', () => {
  it('reports exactly the confirmed LSN as written, flushed and applied (ADR 0002), never one past it', () => {
    const confirmed = 0x1_2345_6789n;
    const before = Date.now();
    const b = standbyStatusUpdate(confirmed, false);
    expect(b.length).toBe(34);
    expect(String.fromCharCode(b[0] as number)).toBe('r');
    expect(b.readBigUInt64BE(1)).toBe(confirmed);
    expect(b.readBigUInt64BE(9)).toBe(confirmed);
    expect(b.readBigUInt64BE(17)).toBe(confirmed);
    // Client time: microseconds since 2000-01-01.
    const sentMs = Number(b.readBigInt64BE(25) / 1000n) + 946_684_800_000;
    expect(sentMs).toBeGreaterThanOrEqual(before);
    expect(sentMs).toBeLessThanOrEqual(Date.now());
    expect(b[33]).toBe(0);
    expect(standbyStatusUpdate(confirmed, true)[33]).toBe(1);
  });
});
