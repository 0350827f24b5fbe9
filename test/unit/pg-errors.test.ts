import { describe, expect, it } from 'vitest';
import { isDataException } from '../../src/postgres/pg-errors.js';

describe('isDataException', () => {
  it('holds for SQLSTATE class 22 (a value that cannot be read as its type) and nothing else', () => {
    expect(isDataException({ code: '22007' })).toBe(true); // invalid_datetime_format
    expect(isDataException({ code: '22008' })).toBe(true); // datetime_field_overflow
    expect(isDataException({ code: '42601' })).toBe(false); // syntax_error
    expect(isDataException({ code: '57P01' })).toBe(false);
    expect(isDataException(new Error('22007'))).toBe(false);
    expect(isDataException(null)).toBe(false);
  });
});
