import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { OutboxdError, UsageError } from '../errors.js';

/**
 * A replay's resume file (`outboxd replay --checkpoint FILE`): the resume point an interrupted
 * replay needs to go on. It is rewritten after every confirmed batch, atomically (a temp file,
 * fsync, rename), so a crash at any moment leaves either the previous resume point or the new
 * one, never half of one. (Neither the relay's watermark nor Kafka's exactly-once checkpoint:
 * the command line calls this file a checkpoint, the code a resume point.)
 *
 * The resume key of a table is the (created_at, tableoid, ctid) of the last row whose message the
 * broker confirmed. A ctid is stable only while the row is not moved: outbox rows are insert-only,
 * but VACUUM FULL, CLUSTER or pg_repack between two runs rewrite the table and break the key.
 */

/** What selects the rows of a run. A resume point resumes only the run with the same filter. */
export interface ReplayFilter {
  /** As given (`--from`), and as Postgres read it then (a `now`-relative bound stays put). */
  readonly from: string | null;
  readonly to: string | null;
  readonly where: string | null;
  /** A trusted condition built by code (lost-slot recovery), with its parameters as JSON. */
  readonly condition: string | null;
}

/** A row's place in the replay's order. */
export interface RowKey {
  /** created_at as text, or null (the row's created_at is NULL, or the table has no such column). */
  readonly createdAt: string | null;
  readonly tableoid: string;
  readonly ctid: string;
}

/** Where a table's replay stands: the last confirmed row, and how many rows were handled. */
export interface TableProgress {
  /** The last row handled (published or dead-lettered), or null before the first. */
  readonly last: RowKey | null;
  /** Rows handled (published, dead-lettered) in this run so far, resumes included. */
  readonly rows: number;
  /** Every row of the table has been handled. */
  readonly done: boolean;
}

/** The resume point of one replay run: where each table stands, under which filter. */
export interface ResumePoint {
  readonly version: 1;
  readonly runId: string;
  readonly filter: ReplayFilter;
  /** The time bounds as Postgres resolved them on the first run (timestamptz text). */
  readonly resolved: { readonly from: string | null; readonly to: string | null };
  /** By table (schema.table as the config names it). */
  readonly tables: Readonly<Record<string, TableProgress>>;
  readonly updatedAt: string;
}

/** Reads a resume file; null when it does not exist. A file that is not one is a usage error. */
export function readResumePoint(file: string): ResumePoint | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new UsageError(`--checkpoint: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let doc: ResumePoint;
  try {
    doc = JSON.parse(text) as ResumePoint;
  } catch {
    throw new UsageError(`--checkpoint: ${file} is not a replay checkpoint (not JSON)`);
  }
  if (doc?.version !== 1 || typeof doc.runId !== 'string' || typeof doc.tables !== 'object' || doc.filter === undefined) {
    throw new UsageError(`--checkpoint: ${file} is not a replay checkpoint (version 1)`);
  }
  return doc;
}

/** Replaces the resume file atomically: write a temp file, flush it to disk, rename it over. */
export function writeResumePoint(file: string, point: ResumePoint): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, `${JSON.stringify(point, null, 2)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, file);
  } catch (err) {
    throw new OutboxdError('INTERNAL', `writing the replay checkpoint ${file}: ${(err as Error).message}`, { cause: err });
  }
}

/** The first way `a` and `b` differ, as `--from "x" (checkpoint: "y")`, or null when equal. */
export function filterDifference(a: ReplayFilter, b: ReplayFilter): string | null {
  for (const k of ['from', 'to', 'where', 'condition'] as const) {
    if (a[k] !== b[k]) return `${k === 'condition' ? 'condition' : `--${k}`} ${show(a[k])} (checkpoint: ${show(b[k])})`;
  }
  return null;
}

const show = (v: string | null) => (v === null ? 'not given' : JSON.stringify(v));
