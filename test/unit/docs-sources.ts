import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import { expect } from 'vitest';

/** Helpers for the tests that keep docs in step with the one declaration they derive from. */
export const ROOT = join(import.meta.dirname, '../..');
export const read = (f: string): string => readFileSync(join(ROOT, f), 'utf8');

/**
 * The members of a union of string literals that a module exports as a type only
 * (`export type ErrorCode = 'A' | 'B'`), read by the TypeScript checker so that a re-export or a
 * move of the declaration behind the same module still resolves. Docs tests compare their tables
 * with it: the type is the one declaration, the table derives from it.
 */
export function exportedStringUnion(moduleFile: string, typeName: string): string[] {
  const file = join(ROOT, moduleFile);
  const program = ts.createProgram([file], {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  });
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  if (!source) throw new Error(`${moduleFile} does not exist`);
  const moduleSymbol = checker.getSymbolAtLocation(source);
  if (!moduleSymbol) throw new Error(`${moduleFile} is not a module`);
  const exported = checker.getExportsOfModule(moduleSymbol).find((s) => s.name === typeName);
  if (!exported) throw new Error(`${moduleFile} exports no ${typeName}`);
  const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
  const type = checker.getDeclaredTypeOfSymbol(symbol);
  const members = type.isUnion() ? type.types : [type];
  return members.map((t) => {
    if (!t.isStringLiteral())
      throw new Error(`${moduleFile}: ${typeName} has a member that is not a string literal: ${checker.typeToString(t)}`);
    return t.value;
  });
}

/** The rows of the first table under a heading line (`## Error codes`) of a markdown file, as cells, header row left out. */
export function tableUnder(file: string, heading: string): string[][] {
  const lines = read(file).split('\n');
  const start = lines.findIndex((l) => l.trim() === heading);
  if (start < 0) throw new Error(`${file} has no heading "${heading}"`);
  const rows: string[][] = [];
  for (const line of lines.slice(start + 1)) {
    if (/^#{1,6} /.test(line)) break;
    if (!line.startsWith('|')) {
      if (rows.length > 0) break;
      continue;
    }
    const cells = line
      .slice(1, line.endsWith('|') ? -1 : undefined)
      .split(' | ')
      .map((c) => c.trim());
    if (cells.every((c) => /^-+$/.test(c))) continue;
    rows.push(cells);
  }
  return rows.slice(1); // the header row
}

/**
 * Expects a doc to list exactly what the code declares: nothing documented but not declared,
 * nothing declared but not documented, nothing documented twice.
 */
export function expectDocumentsExactly(documented: readonly string[], declared: readonly string[]): void {
  expect(
    documented.filter((d) => !declared.includes(d)),
    'documented but not declared',
  ).toEqual([]);
  expect(
    declared.filter((d) => !documented.includes(d)),
    'declared but not documented',
  ).toEqual([]);
  expect(
    documented.filter((d, i) => documented.indexOf(d) !== i),
    'documented twice',
  ).toEqual([]);
}
