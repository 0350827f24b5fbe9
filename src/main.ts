#!/usr/bin/env node
import { cli } from './cli.js';

cli(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Don't wait for sockets a driver may keep half-open; everything that matters is flushed.
    setTimeout(() => process.exit(code), 200).unref();
  },
  (err: unknown) => {
    process.stderr.write(`outboxd: internal error: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
