import type { Config } from '../config/config.js';
import { ExitCode, UsageError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { ReplayProgress, ReplayStart, ReplaySummary } from '../replay/options.js';
import { replayRows } from '../replay/replay.js';

/**
 * `outboxd replay`: the command line around the replay engine (src/replay/replay.ts). It reports
 * on stderr (stdout may be the stdout sink's), with a progress bar on a terminal and progress
 * lines in the log otherwise. The caller's signal (the first SIGINT or SIGTERM) stops it after the
 * batch in progress is confirmed and its resume point written: exit 130.
 */

export interface ReplayArgs {
  readonly from?: string;
  readonly to?: string;
  readonly where?: string;
  readonly checkpoint?: string;
  readonly dryRun: boolean;
}

/** How often progress is logged when stderr is not a terminal. */
const LOG_EVERY_MS = 5_000;
/** How often the progress bar is redrawn. */
const DRAW_EVERY_MS = 100;

/** The replay's command-line options, checked: a time bound or a filter is required. */
export function replayArgs(values: Readonly<Record<string, string>>, flags: ReadonlySet<string>): ReplayArgs {
  if (values.from === undefined && values.where === undefined) {
    throw new UsageError('replay needs --from TIME or --where EXPR (or both): it never replays a whole table unasked');
  }
  return { from: values.from, to: values.to, where: values.where, checkpoint: values.checkpoint, dryRun: flags.has('--dry-run') };
}

/**
 * Runs the replay and reports it. Returns the exit code: 0 done, 1 halted by a poison row (the
 * one-line error names it), 130 interrupted by `signal` (after writing the resume point).
 */
export async function replayCommand(
  cfg: Config,
  args: ReplayArgs,
  log: Logger,
  signal: AbortSignal,
  out: NodeJS.WriteStream = process.stdout,
  err: NodeJS.WriteStream = process.stderr,
): Promise<number> {
  const report = new Progress(err, log);
  try {
    const summary = await replayRows({
      cfg,
      log,
      from: args.from,
      to: args.to,
      where: args.where,
      dryRun: args.dryRun,
      resumeFile: args.checkpoint,
      signal,
      onStart: (s) => report.start(s),
      onProgress: (p) => report.update(p),
    });
    report.end();
    err.write(`${summaryLine(summary)}\n`);
    if (summary.dryRun) out.write(destinationTable(summary));
    if (summary.outcome === 'halted' && summary.firstPoison) {
      const p = summary.firstPoison;
      err.write(
        `outboxd: replay halted at poison row id ${p.id ?? '(none)'} in ${p.table} (${p.reason}): ${p.message}; ` +
          `fix or remove the row (or set outbox.onPoison: dead-letter), then rerun with the same --checkpoint to resume\n`,
      );
      return ExitCode.failure;
    }
    return summary.outcome === 'interrupted' ? ExitCode.forced : ExitCode.ok;
  } finally {
    report.end();
  }
}

/** Progress: a bar redrawn in place on a terminal, a log line every few seconds otherwise. */
class Progress {
  private started = performance.now();
  private drawnAt = 0;
  private drawn = false;
  private runId = '';

  constructor(
    private readonly err: NodeJS.WriteStream,
    private readonly log: Logger,
  ) {}

  start(s: ReplayStart): void {
    this.started = performance.now();
    this.runId = s.runId;
    const window = `${s.from ?? '(no lower bound)'} .. ${s.to ?? '(no upper bound)'}`;
    const resumed = s.resumed ? `, resuming (${s.skipped} rows done before)` : '';
    this.err.write(`outboxd replay ${s.runId}: ${s.total} rows to read, created ${window}${resumed}\n`);
  }

  update(p: ReplayProgress): void {
    const now = performance.now();
    const tty = this.err.isTTY === true;
    if (now - this.drawnAt < (tty ? DRAW_EVERY_MS : LOG_EVERY_MS) && p.read < p.total) return;
    this.drawnAt = now;
    const rate = Math.round(p.read / Math.max(0.001, (now - this.started) / 1000));
    if (!tty) {
      this.log.info(
        { runId: this.runId, table: p.table, read: p.read, total: p.total, published: p.published, poison: p.poison, rowsPerSecond: rate },
        'replay progress',
      );
      return;
    }
    const share = p.total === 0 ? 1 : Math.min(1, p.read / p.total);
    const width = 24;
    const full = Math.round(share * width);
    const bar = `${'#'.repeat(full)}${'-'.repeat(width - full)}`;
    this.err.write(
      `\r[${bar}] ${(share * 100).toFixed(0).padStart(3)}%  ${p.read}/${p.total} rows  ${rate} rows/s  ${p.poison} poison  ${p.table}\x1b[K`,
    );
    this.drawn = true;
  }

  /** Ends the bar's line, once. */
  end(): void {
    if (!this.drawn) return;
    this.drawn = false;
    this.err.write('\n');
  }
}

function summaryLine(s: ReplaySummary): string {
  const what = s.dryRun ? 'dry run (nothing published)' : s.outcome === 'done' ? 'done' : s.outcome;
  const published = s.dryRun ? `${s.published} would be published` : `${s.published} published`;
  const poison = s.dryRun ? `${s.poison} poison` : `${s.poison} poison (${s.deadLettered} dead-lettered)`;
  return `outboxd replay ${s.runId}: ${what} in ${(s.elapsedMs / 1000).toFixed(1)}s: ${s.read} rows read, ${published}, ${poison}, ${s.skipped} skipped (done by an earlier run)`;
}

/** The dry run's result: messages per table and destination, one per line, tab-separated. */
function destinationTable(s: ReplaySummary): string {
  const lines = ['table\tdestination\tmessages', ...s.destinations.map((d) => `${d.table}\t${d.destination}\t${d.messages}`)];
  return `${lines.join('\n')}\n`;
}
