export function median(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return Number.NaN;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 === 1 ? (v[mid] as number) : ((v[mid - 1] as number) + (v[mid] as number)) / 2;
}

export function min(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x));
  return v.length ? Math.min(...v) : Number.NaN;
}

export function max(values: readonly number[]): number {
  const v = values.filter((x) => Number.isFinite(x));
  return v.length ? Math.max(...v) : Number.NaN;
}

/** Exact quantile (nearest rank) of a sorted array. */
export function quantileSorted(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i] as number;
}

export interface Buckets {
  /** Upper bounds (le), ascending, +Inf last. */
  le: number[];
  /** Cumulative counts per bound. */
  cumulative: number[];
  count: number;
  sum: number;
}

/** A Prometheus histogram (no labels) out of the text exposition. */
export function parseHistogram(text: string, name: string): Buckets | null {
  const le: number[] = [];
  const cumulative: number[] = [];
  let count = Number.NaN;
  let sum = Number.NaN;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}_bucket{`)) {
      const m = /le="([^"]+)"[^}]*\} ([^ ]+)/.exec(line);
      if (!m) continue;
      le.push(m[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(m[1]));
      cumulative.push(Number(m[2]));
    } else if (line.startsWith(`${name}_count`)) count = Number(line.split(' ').pop());
    else if (line.startsWith(`${name}_sum`)) sum = Number(line.split(' ').pop());
  }
  if (le.length === 0) return null;
  return { le, cumulative, count, sum };
}

/**
 * histogram_quantile as Prometheus computes it: linear interpolation inside the bucket that
 * holds the q-th observation (from 0 for the first bucket). Only as precise as the buckets.
 */
export function histogramQuantile(h: Buckets, q: number): number {
  if (!(h.count > 0)) return Number.NaN;
  const rank = q * h.count;
  for (let i = 0; i < h.le.length; i++) {
    const c = h.cumulative[i] as number;
    if (c >= rank) {
      const upper = h.le[i] as number;
      const lower = i === 0 ? 0 : (h.le[i - 1] as number);
      const below = i === 0 ? 0 : (h.cumulative[i - 1] as number);
      if (!Number.isFinite(upper)) return lower;
      const inBucket = c - below;
      return inBucket > 0 ? lower + ((upper - lower) * (rank - below)) / inBucket : upper;
    }
  }
  return Number.NaN;
}

/** The observations of `later` that `earlier` (the same histogram, scraped before) had not seen. */
export function histogramSince(later: Buckets, earlier: Buckets | null): Buckets {
  if (earlier === null) return later;
  if (earlier.le.length !== later.le.length) throw new Error('histogramSince: the two scrapes have different buckets');
  return {
    le: later.le,
    cumulative: later.cumulative.map((c, i) => c - (earlier.cumulative[i] as number)),
    count: later.count - earlier.count,
    sum: later.sum - earlier.sum,
  };
}

/** The smallest bucket bound that holds every observation: "max ≤ this". */
export function histogramMaxBound(h: Buckets): number {
  for (let i = 0; i < h.le.length; i++) if ((h.cumulative[i] as number) >= h.count) return h.le[i] as number;
  return Number.POSITIVE_INFINITY;
}
