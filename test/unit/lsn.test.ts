import { describe, expect, it } from 'vitest';
import { formatLsn, lsnFromWords, parseLsn } from '../../src/lsn.js';

describe('LSN', () => {
  it('parses padded and unpadded forms to the same bigint', () => {
    expect(parseLsn('0/23BA8180')).toBe(0x23ba8180n);
    expect(parseLsn('00000000/23BA8180')).toBe(0x23ba8180n);
    expect(parseLsn('1/0')).toBe(1n << 32n);
  });

  it('orders numerically where string comparison would not', () => {
    expect(parseLsn('0/9000000') < parseLsn('0/10000000')).toBe(true);
    expect('0/9000000' < '0/10000000').toBe(false);
  });

  it('formats like Postgres and round-trips', () => {
    for (const text of ['0/0', '0/16B3748', 'FFFFFFFF/FFFFFFFF', '3/A']) expect(formatLsn(parseLsn(text))).toBe(text);
  });

  it('builds LSNs from the two 32-bit words of the wire format, on both sides of 2^53', () => {
    for (const [hi, lo] of [
      [0, 0],
      [0, 0xffffffff],
      [0x1fffff, 0xffffffff],
      [0x200000, 0],
      [0xffffffff, 0xffffffff],
    ] as const) {
      const lsn = lsnFromWords(hi, lo);
      expect(lsn).toBe((BigInt(hi) << 32n) | BigInt(lo));
      expect(formatLsn(lsn)).toBe(`${hi.toString(16).toUpperCase()}/${lo.toString(16).toUpperCase()}`);
    }
  });

  it('rejects malformed text', () => {
    for (const bad of ['', '0', '/1', '1/', 'x/1', '100000000/0']) expect(() => parseLsn(bad)).toThrow(/invalid LSN/);
  });
});
