import { describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.js';
import { expectDocumentsExactly, exportedStringUnion, tableUnder } from './docs-sources.js';

/**
 * The error codes and exit codes are declared once, in src/errors.ts (`ErrorCode`, `ExitCode`).
 * These tests keep the catalogue in docs/errors.md, and the README's exit-code table, in step
 * with them, as config-schema.test.ts does for docs/config.md.
 */

/** The one `code` in a cell, or the cell's text. */
const code = (cell: string | undefined) => /^`([^`]+)`$/.exec(cell ?? '')?.[1] ?? cell ?? '';

describe('docs/errors.md', () => {
  const declaredCodes = exportedStringUnion('src/errors.ts', 'ErrorCode');

  it('reads the ErrorCode union from src/errors.ts', () => {
    expect(declaredCodes).toContain('CONFIG_INVALID');
    expect(declaredCodes.length).toBeGreaterThan(10);
  });

  it('catalogues exactly the error codes src/errors.ts declares, each once', () => {
    const documented = tableUnder('docs/errors.md', '## Error codes').map((r) => code(r[0]));
    expectDocumentsExactly(documented, declaredCodes);
  });

  it('gives every error code a meaning and an action', () => {
    for (const row of tableUnder('docs/errors.md', '## Error codes')) {
      expect(row, `row of ${row[0]}`).toHaveLength(5);
      expect(row[3]?.length, `what ${row[0]} means`).toBeGreaterThan(20);
      expect(row[4]?.length, `what to do about ${row[0]}`).toBeGreaterThan(5);
    }
  });

  it('lists exactly the exit codes of ExitCode, by number and name', () => {
    const documented = tableUnder('docs/errors.md', '## Exit codes').map((r) => `${r[0]} ${code(r[1])}`);
    const declared = Object.entries(ExitCode).map(([name, n]) => `${n} ${name}`);
    expect(documented.sort()).toEqual(declared.sort());
  });
});

describe('README.md exit codes', () => {
  it('lists exactly the numbers of ExitCode', () => {
    const documented = tableUnder('README.md', '### Exit codes')
      .map((r) => Number(r[0]))
      .sort((a, b) => a - b);
    expect(documented).toEqual(Object.values(ExitCode).sort((a, b) => a - b));
  });
});
