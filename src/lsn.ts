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
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

export function maxLsn(a: Lsn, b: Lsn): Lsn {
  return a > b ? a : b;
}
