/** Waiting in tests and in the harness: one sleep and one poll, for everything. */

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export interface UntilOptions {
  /** Errors from `fn` count as "not yet" (a server still starting); the last one is reported. */
  tolerateErrors?: boolean;
  /** A reason to give up at once (the process being waited for has exited). */
  abortReason?: () => string | undefined;
}

/**
 * Polls `fn` every `everyMs` until it returns something other than undefined or false, and
 * returns that. Throws, naming `what`, after `timeoutMs`.
 */
export async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | false>,
  timeoutMs = 60_000,
  everyMs = 100,
  opts: UntilOptions = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  for (;;) {
    const reason = opts.abortReason?.();
    if (reason) throw new Error(`${what}: ${reason}`);
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      if (!opts.tolerateErrors) throw err;
      lastError = (err as Error).message;
    }
    if (Date.now() > deadline)
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError})` : ''}`);
    await sleep(everyMs);
  }
}
