import { expect } from 'vitest';
import { PoisonError } from '../../src/errors.js';

/** Runs `fn`, which must throw a PoisonError, and returns it. */
export function poison(fn: () => unknown): PoisonError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PoisonError);
    return err as PoisonError;
  }
  throw new Error('expected a PoisonError');
}
