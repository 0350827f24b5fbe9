/**
 * Watches calls to the broker: one unanswered for `timeoutMs` makes the sink stalled until an
 * answer (a confirm, or a failure) comes. A broker that stops answering without closing the
 * connection (a paused process, a black-holed network) shows here long before the client's own
 * timeout.
 */
export class StallWatch {
  private stalled = false;

  constructor(
    private readonly timeoutMs: number,
    private readonly report: (stalled: boolean, waitedMs: number) => void,
  ) {}

  async watch<T>(call: Promise<T>): Promise<T> {
    const started = performance.now();
    const timer = setTimeout(() => {
      this.stalled = true;
      this.report(true, performance.now() - started);
    }, this.timeoutMs);
    try {
      return await call;
    } finally {
      clearTimeout(timer);
      if (this.stalled) {
        this.stalled = false;
        this.report(false, performance.now() - started);
      }
    }
  }
}
