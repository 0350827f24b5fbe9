/**
 * Node.js process warnings, routed: by default Node prints them to stderr as free text, which
 * would break the JSON log stream (and the CLI's one-line errors). `routeWarnings` replaces that
 * printing with `handler`.
 *
 * One warning is dropped: kafkajs 2.2.4 schedules its request-queue check with
 * `setTimeout(fn, throttledUntil - Date.now())` while `throttledUntil` is -1, a negative delay that
 * Node 24 reports as a TimeoutNegativeWarning and runs after 1 ms, exactly as intended.
 */
export function routeWarnings(handler: (warning: Error) => void): void {
  process.removeAllListeners('warning');
  process.on('warning', (w: Error) => {
    if (w.name === 'TimeoutNegativeWarning') return;
    handler(w);
  });
}
