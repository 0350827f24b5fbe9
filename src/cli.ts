import { parseArgs } from 'node:util';
import { Relay } from './app.js';
import { runChecks } from './commands/doctor.js';
import { setupCommand } from './commands/setup.js';
import { statusCommand } from './commands/status.js';
import { loadConfigFile } from './config/load.js';
import { ExitCode, UsageError, exitCodeFor, oneLine } from './errors.js';
import { createLogger } from './observability/logger.js';
import { routeWarnings } from './observability/warnings.js';
import { VERSION } from './version.js';

export const USAGE = `outboxd ${VERSION}: relays transactional outbox rows from Postgres logical replication to Kafka, RabbitMQ or stdout

usage:
  outboxd run -c FILE                   run the relay
  outboxd validate -c FILE [--connect]  check the config; --connect also checks Postgres and the broker
  outboxd status -c FILE [--json]       the replication slot: active, confirmed LSN, lag, retained WAL
  outboxd setup -c FILE [--print] [--partitioned]
                                        create the publication and slot (or print the SQL) and print the outbox DDL
                                        (--partitioned: a table partitioned by day, for outbox.prune.mode partitions)
  outboxd --version | --help

exit codes: 0 ok, 1 runtime failure or a failed check, 2 usage, 3 invalid config, 4 replication slot lost, missing or unusable, 130 forced stop`;

interface Args {
  command: string;
  config: string | undefined;
  flags: Set<string>;
}

/** The flags each command takes, besides -c/--config. */
const FLAGS: Record<string, readonly string[]> = { validate: ['connect'], status: ['json'], setup: ['print', 'partitioned'], run: [] };

/** Parses `COMMAND [-c FILE] [--flag…]` with node:util's parser; a bad argument is a UsageError. */
export function parseCommandLine(argv: readonly string[]): Args {
  const [command, ...rest] = argv;
  if (!command) throw new UsageError(`missing command\n${USAGE}`);
  const flags = FLAGS[command] ?? [];
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        ...Object.fromEntries(flags.map((f) => [f, { type: 'boolean' as const }])),
      },
    });
  } catch (err) {
    const code = (err as { code?: string }).code;
    const arg = /'([^']+)'/.exec((err as Error).message)?.[1] ?? '';
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(`${arg.split(/[ ,]/)[0]} needs a file`);
    throw new UsageError(`unknown argument "${arg.split(' ')[0] || rest.join(' ')}" for ${command}`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  const config = values.config;
  if (config === '') throw new UsageError('-c needs a file');
  return {
    command,
    config: typeof config === 'string' ? config : undefined,
    flags: new Set(flags.filter((f) => values[f] === true).map((f) => `--${f}`)),
  };
}

/** Runs the CLI. Returns the exit code; writes errors as one line on stderr. */
export async function cli(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  try {
    if (argv[0] === '--version' || argv[0] === 'version') {
      process.stdout.write(`${VERSION}\n`);
      return ExitCode.ok;
    }
    if (argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
      process.stdout.write(`${USAGE}\n`);
      return ExitCode.ok;
    }
    const args = parseCommandLine(argv);
    const configFile = args.config ?? env.OUTBOXD_CONFIG;
    if (!configFile) throw new UsageError(`${args.command} needs -c FILE (or OUTBOXD_CONFIG)`);
    switch (args.command) {
      case 'validate': {
        const cfg = loadConfigFile(configFile, env);
        process.stdout.write(
          `ok: ${configFile} is valid (sink ${cfg.sink.type}, ${cfg.outbox.tables.length} table(s), slot ${cfg.postgres.slot})\n`,
        );
        if (!args.flags.has('--connect')) return ExitCode.ok;
        const checks = await runChecks(cfg);
        for (const c of checks) process.stdout.write(`${c.status.padEnd(4)}  ${c.name}: ${c.detail}\n`);
        return checks.some((c) => c.status === 'fail') ? ExitCode.failure : ExitCode.ok;
      }
      case 'status':
        return await statusCommand(loadConfigFile(configFile, env), args.flags.has('--json'), process.stdout);
      case 'setup':
        return await setupCommand(loadConfigFile(configFile, env), args.flags.has('--print'), process.stdout, args.flags.has('--partitioned'));
      case 'run':
        return await run(configFile, env);
      default:
        throw new UsageError(`unknown command "${args.command}"; try run, validate, status or setup`);
    }
  } catch (err) {
    process.stderr.write(`outboxd: ${oneLine(err)}\n`);
    return exitCodeFor(err);
  }
}

async function run(configFile: string, env: NodeJS.ProcessEnv): Promise<number> {
  const cfg = loadConfigFile(configFile, env);
  const log = createLogger(cfg.log.level);
  routeWarnings((w) => log.warn({ err: w }, 'Node.js warning'));
  const relay = await Relay.create(cfg, log);
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    // The same signal delivered twice at once (to a process group, by `timeout`) is one request.
    if (firstSignalAt !== 0 && now - firstSignalAt < 1_000) return;
    if (firstSignalAt === 0) {
      firstSignalAt = now;
      log.info({ signal }, 'stopping: draining in-flight messages (send the signal again to force)');
      void relay.stop();
    } else {
      log.warn({ signal }, 'forced exit: unconfirmed messages will be published again on the next start');
      log.flush();
      process.exit(ExitCode.forced);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  await relay.start();
  const code = await relay.done;
  process.off('SIGTERM', onSignal);
  process.off('SIGINT', onSignal);
  await new Promise<void>((resolve) => log.flush(() => resolve()));
  return code;
}
