import { Histogram } from 'prom-client';

/** What prom-client 15's Histogram keeps for a label set (lib/histogram.js, createBaseValues). */
interface LabelSetValues {
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
}

/**
 * A prom-client Histogram without labels, for the relay's hot path, where one observation is made
 * for every event. prom-client's own `observe()` makes a closure, a labels object and a pair
 * object, and turns the bucket bound into a string twice, on every call: about 100 ns and a few
 * hundred bytes of garbage per event (docs/benchmarks.md, "Later: the latency histogram").
 *
 * Here an observation adds one to a typed array and to the count and sum. When the metric is
 * scraped, prom-client's `collect` hook writes the totals into the values prom-client keeps for
 * the label set (made at construction; after a reset, made again by one observation of
 * prom-client's own, which the totals then replace). The exposition is prom-client's own, byte
 * for byte.
 * test/unit/counting-histogram.test.ts compares it with a plain Histogram, including values on
 * the bounds, above the last one, and a reset, so a prom-client that keeps its values in another
 * shape fails a test instead of exporting wrong counts.
 */
export class CountingHistogram extends Histogram<string> {
  private readonly bounds: readonly number[];
  /** Observations per bucket, not cumulative (as prom-client keeps them): counts[i] holds those in (bounds[i-1], bounds[i]]. */
  private readonly counts: Float64Array;
  private total = 0;
  private sum = 0;

  constructor(cfg: { name: string; help: string; buckets: number[]; registers?: ConstructorParameters<typeof Histogram>[0]['registers'] }) {
    super({
      ...cfg,
      collect(this: Histogram<string>) {
        (this as CountingHistogram).handOver();
      },
    });
    this.bounds = [...cfg.buckets];
    this.counts = new Float64Array(this.bounds.length);
    this.observe = ((value: number) => this.record(value)) as Histogram<string>['observe'];
  }

  /** One observation (what `observe` does). */
  private record(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        this.counts[i] = (this.counts[i] as number) + 1;
        break;
      }
    }
    this.total++;
    this.sum += value;
  }

  override reset(): void {
    // prom-client's constructor resets too, before this class has set its fields.
    this.counts?.fill(0);
    this.total = 0;
    this.sum = 0;
    super.reset();
  }

  /** Writes the totals into prom-client's values for the (one) label set. */
  private handOver(): void {
    const map = (this as unknown as { hashMap: Record<string, LabelSetValues> }).hashMap;
    let values = Object.values(map)[0];
    if (values === undefined) {
      // After a reset prom-client exports nothing until an observation; then its own observe()
      // makes the label set's values, and the totals replace its one observation.
      if (this.total === 0) return;
      (Histogram.prototype as unknown as { observeWithoutExemplar(v: number): void }).observeWithoutExemplar.call(this, 0);
      values = Object.values(map)[0] as LabelSetValues;
    }
    for (let i = 0; i < this.bounds.length; i++) values.bucketValues[String(this.bounds[i])] = this.counts[i] as number;
    values.count = this.total;
    values.sum = this.sum;
  }
}
