import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { basename, dirname, join, relative } from 'node:path';
import { execFileSync } from 'node:child_process';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/**
 * A comment that names a file sends the reader there. When a file moves, such comments go stale
 * silently. This test reads every comment in src/, test/, bench/ and scripts/ (TypeScript and
 * JavaScript comments through the TypeScript parser, `#` comments in shell) and lists each named
 * path that does not exist, as `file:line → path`: the list is the to-do for mending them.
 *
 * - A path with a folder (under src, test, docs, bench or scripts, or starting with a dot)
 *   resolves from the repo root, or from the comment's own folder when it starts with a dot.
 *   `docs/adr/0009` names the ADR whose file starts so. A path git ignores (a run's output) counts.
 * - A bare file name (`watermark.ts`) names a file of that name anywhere in the repository: the
 *   comment does not say where, so only the name can go stale.
 */
const ROOT = join(import.meta.dirname, '../..');
const FOLDERS = ['src', 'test', 'bench', 'scripts'];
const SCRIPT = /\.(ts|mts|js|mjs|cjs)$/;

/** Bare names that are not files of this repository: the CloudEvents spec's files (cloudevents/spec 1.0.2). */
const ELSEWHERE = new Set<string>(['spec.md', 'json-format.md', 'kafka-protocol-binding.md', 'amqp-protocol-binding.md']);

function trackedFiles(folders: readonly string[]): string[] {
  const out = execFileSync('git', ['ls-files', '-co', '--exclude-standard', ...folders], { cwd: ROOT, encoding: 'utf8' });
  return out.split('\n').filter((f) => f !== '' && existsSync(join(ROOT, f)));
}

/** The base names of every file in the repository, for bare names. */
const BASENAMES = new Set(trackedFiles(['.']).map((f) => basename(f)));

/** Whether git ignores the path, as a file or as a folder (`results/`): a run's output, not a source. */
function ignored(path: string): boolean {
  const check = (p: string) => {
    try {
      execFileSync('git', ['check-ignore', '-q', '--no-index', p], { cwd: ROOT });
      return true;
    } catch {
      return false;
    }
  };
  return check(path) || check(`${path}/`);
}

/** Whether a path with a folder exists; an extensionless last part may be a prefix (`docs/adr/0009`). */
function exists(resolved: string): boolean {
  if (existsSync(resolved)) return true;
  const dir = dirname(resolved);
  const stem = basename(resolved);
  return /^\d+$/.test(stem) && existsSync(dir) && readdirSync(dir).some((f) => f.startsWith(`${stem}-`));
}

interface Comment {
  line: number;
  text: string;
}

/** Every comment of a TypeScript or JavaScript file, with the line it starts on (1-based). */
function scriptComments(text: string, file: string): Comment[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true);
  const seen = new Set<number>();
  const comments: Comment[] = [];
  const take = (ranges: ts.CommentRange[] | undefined) => {
    for (const r of ranges ?? []) {
      if (seen.has(r.pos)) continue;
      seen.add(r.pos);
      comments.push({ line: source.getLineAndCharacterOfPosition(r.pos).line + 1, text: text.slice(r.pos, r.end) });
    }
  };
  const visit = (node: ts.Node) => {
    take(ts.getLeadingCommentRanges(text, node.getFullStart()));
    take(ts.getTrailingCommentRanges(text, node.getEnd()));
    ts.forEachChild(node, visit);
  };
  visit(source);
  take(ts.getLeadingCommentRanges(text, source.endOfFileToken.getFullStart()));
  return comments;
}

/** The `#` comments of a shell script (not `#!`, `$#`, `${#x}`, or a `#` inside a word). */
function shellComments(text: string): Comment[] {
  const comments: Comment[] = [];
  text.split('\n').forEach((line, i) => {
    const m = /(?:^|\s)#(?!!)(.*)$/.exec(line);
    if (m) comments.push({ line: i + 1, text: m[1] as string });
  });
  return comments;
}

const WITH_FOLDER = /(?<![\w./-])((?:\.\.?\/)+[\w.-]+(?:\/[\w.-]+)*|(?:src|test|bench|scripts|docs)\/[\w.-]+(?:\/[\w.-]+)*)/g;
const BARE = /(?<![\w./@-])([\w-]+(?:\.[\w-]+)*\.(?:ts|mjs|sh|md))(?![\w/-])/g;

/** Each path a comment names that does not exist, resolved as the header says. */
function missing(file: string, comment: Comment): string[] {
  const here = dirname(join(ROOT, file));
  const out: string[] = [];
  const lines = comment.text.split('\n');
  lines.forEach((text, i) => {
    const at = `${file}:${comment.line + i}`;
    for (const m of text.matchAll(WITH_FOLDER)) {
      const path = (m[1] as string).replace(/\.+$/, '');
      if (path.endsWith('/') || path === '') continue;
      const resolved = path.startsWith('.') ? join(here, path) : join(ROOT, path);
      if (!exists(resolved) && !ignored(relative(ROOT, resolved))) out.push(`${at} → ${path}`);
    }
    for (const m of text.matchAll(BARE)) {
      const name = m[1] as string;
      if (!ELSEWHERE.has(name) && !BASENAMES.has(name)) out.push(`${at} → ${name}`);
    }
  });
  return out;
}

describe('paths named in comments', () => {
  it('all exist: a comment that names a file names one that is there', () => {
    const files = trackedFiles(FOLDERS);
    expect(files.length).toBeGreaterThan(100);
    const misses: string[] = [];
    let named = 0;
    for (const file of files) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      const comments = SCRIPT.test(file) ? scriptComments(text, file) : file.endsWith('.sh') ? shellComments(text) : [];
      for (const c of comments) {
        named += [...c.text.matchAll(WITH_FOLDER), ...c.text.matchAll(BARE)].length;
        misses.push(...missing(file, c));
      }
    }
    expect(named, 'paths named in comments (the scan found them)').toBeGreaterThan(50);
    expect(misses, `comments name ${misses.length} path(s) that do not exist:\n${misses.join('\n')}\n`).toEqual([]);
  });
});
