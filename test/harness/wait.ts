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

/**
 * The opposite of `until`: polls `fn` every `everyMs` for `forMs` and throws, naming `what`, the
 * first time it returns false. For "stays so for a while" (a watchdog that must not fire while
 * rows keep moving): every poll is a check that can fail, not one look after a sleep.
 */
export async function stays(what: string, fn: () => Promise<boolean>, forMs: number, everyMs = 100): Promise<void> {
  const end = Date.now() + forMs;
  let polls = 0;
  for (;;) {
    if (!(await fn())) throw new Error(`${what}: no longer so after ${polls} checks`);
    polls++;
    if (Date.now() >= end) return;
    await sleep(everyMs);
  }
}

/** `p`'s value, or `fallback` if it has not settled within `ms` (a bound on waiting for a process to exit). */
export async function within<T, F>(p: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<F>((resolve) => {
    timer = setTimeout(() => resolve(fallback), ms);
  });
  try {
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}
