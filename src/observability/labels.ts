/**
 * Keeps a metric label's values bounded when they come from data: the first `max` distinct
 * values are kept, every later one is counted under `other`, and the overflow is reported once.
 * A label per rendered destination would otherwise make one time series per key forever.
 */
export class LabelLimiter {
  private readonly seen = new Set<string>();
  private overflowed = false;

  constructor(
    private readonly max: number,
    private readonly onOverflow: (firstDropped: string, max: number) => void,
  ) {}

  label(value: string): string {
    if (this.seen.has(value)) return value;
    if (this.seen.size < this.max) {
      this.seen.add(value);
      return value;
    }
    if (!this.overflowed) {
      this.overflowed = true;
      this.onOverflow(value, this.max);
    }
    return OTHER;
  }
}

export const OTHER = 'other';

/** Distinct values of the `destination` label before the rest count as `other`. */
export const MAX_DESTINATION_LABELS = 100;
