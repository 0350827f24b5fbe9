/**
 * `buf.toString('utf8', start, end)` without toString's argument handling, which cost as much as
 * the decoding of a row's few short columns (bench/profile.ts): Buffer's own UTF-8 slice, which
 * every Buffer has on Node 22 and 24 (toString calls it); toString where it does not.
 */
export const utf8: (buf: Buffer, start: number, end: number) => string =
  typeof (Buffer.prototype as unknown as Partial<Utf8Slice>).utf8Slice === 'function'
    ? (buf, start, end) => (buf as unknown as Utf8Slice).utf8Slice(start, end)
    : (buf, start, end) => buf.toString('utf8', start, end);
interface Utf8Slice {
  utf8Slice(start: number, end: number): string;
}
