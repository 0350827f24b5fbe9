#!/usr/bin/env node
import { bringOwnRuntime } from './runtime.js';

// First, before the rest of outboxd is loaded: node started again with outboxd's V8 flags and
// malloc setting when they are missing (runtime.ts). The process is replaced in place.
bringOwnRuntime();

const { cli } = await import('./cli.js');
const { oneLine } = await import('./errors.js');
const { routeWarnings } = await import('./observability/warnings.js');

// A crash outside the relay's own handling still ends in one redacted line and exit code 1,
// never in Node's default report (which prints the error, its stack and any secret it holds).
const crash = (kind: string) => (err: unknown) => {
  process.stderr.write(`outboxd: internal error (${kind}): ${oneLine(err)}\n`);
  process.exit(1);
};
process.on('uncaughtException', crash('uncaught exception'));
process.on('unhandledRejection', crash('unhandled rejection'));
routeWarnings((w) => process.stderr.write(`outboxd: warning: ${oneLine(w)}\n`));

cli(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
  // Don't wait for sockets a driver may keep half-open; everything that matters is flushed.
  setTimeout(() => process.exit(code), 200).unref();
}, crash('cli'));
