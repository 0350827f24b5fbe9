import { describe, expect, it } from 'vitest';
import { LabelLimiter } from '../../src/observability/labels.js';

describe('LabelLimiter', () => {
  it('keeps the first N distinct values, counts the rest as other, and reports the overflow once', () => {
    const reported: string[] = [];
    const l = new LabelLimiter(3, (first) => reported.push(first));
    expect(['a', 'b', 'a', 'c'].map((v) => l.label(v))).toEqual(['a', 'b', 'a', 'c']);
    expect(['d', 'e', 'b'].map((v) => l.label(v))).toEqual(['other', 'other', 'b']);
    expect(reported).toEqual(['d']);
  });
});
