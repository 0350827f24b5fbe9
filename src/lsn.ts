/**
 * Log sequence numbers. Postgres writes them as `X/Y` (two hex 32-bit halves); the replication
 * library hands them out both padded (`00000000/23BA8180`) and not (`0/23BA8180`). We parse them
 * to bigint once at the edge and never compare LSN strings.
 */
export type Lsn = bigint;

export const ZERO_LSN: Lsn = 0n;

export function parseLsn(text: string): Lsn {
  const slash = text.indexOf('/');
  if (slash <= 0 || slash === text.length - 1) throw new Error(`invalid LSN "${text}"`);
  const hi = Number.parseInt(text.slice(0, slash), 16);
  const lo = Number.parseInt(text.slice(slash + 1), 16);
  if (!Number.isFinite(hi) || !Number.isFinite(lo) || hi < 0 || lo < 0 || hi > 0xffffffff || lo > 0xffffffff) {
    throw new Error(`invalid LSN "${text}"`);
  }
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** Formats the way Postgres does: upper-case hex, unpadded (`0/23BA8180`). */
export function formatLsn(lsn: Lsn): string {
  if (lsn < 0n) throw new Error(`negative LSN ${lsn}`);
  if (lsn < 0x20000000000000n) {
    // Number arithmetic is exact below 2^53 and much cheaper than BigInt shifts (once per transaction).
    const n = Number(lsn);
    const hi = Math.floor(n / 4_294_967_296);
    return `${hi.toString(16).toUpperCase()}/${(n - hi * 4_294_967_296).toString(16).toUpperCase()}`;
  }
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}

/** The LSN whose high and low 32-bit words are given (as the wire protocol sends them). */
export function lsnFromWords(hi: number, lo: number): Lsn {
  // Exact in a double below 2^53 bytes of WAL, the case for any real cluster; BigInt arithmetic otherwise.
  return hi < 0x200000 ? BigInt(hi * 4_294_967_296 + lo) : (BigInt(hi) << 32n) | BigInt(lo);
}
