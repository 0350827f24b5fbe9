import { parseArgs } from 'node:util';
import { Relay } from './app.js';
import { runChecks } from './commands/validate.js';
import { replayArgs, replayCommand } from './commands/replay.js';
import { setupCommand } from './commands/setup.js';
import { retireCommand } from './commands/retire.js';
import { reshardCommand } from './commands/reshard.js';
import { statusCommand } from './commands/status.js';
import { loadConfigFile } from './config/load.js';
import { ExitCode, UsageError, exitCodeFor, oneLine } from './errors.js';
import { type Logger, createLogger } from './observability/logger.js';
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
  outboxd replay -c FILE (--from TIME [--to TIME] | --where EXPR) [--where EXPR] [--checkpoint FILE] [--dry-run]
                                        publish retained outbox rows again (at least once, original ids, header
                                        outboxd-replay); TIME: any timestamptz, --from inclusive, --to exclusive;
                                        EXPR: col = 'v' [AND col IN ('a','b') AND col IS [NOT] NULL ...];
                                        --checkpoint: resume an interrupted replay; --dry-run: count, publish nothing
  outboxd retire -c FILE [--slot NAME]  forget a relay for good: drop its slot and its confirmed epoch, so that
                                        pruning no longer waits for it (default: the config's own slot)
  outboxd reshard -c NEW_FILE --from N|unsharded [--finish]
                                        move the outbox from N shards (or the unsharded relay) to NEW_FILE's
                                        postgres.shard.count, while writers write: creates the new slots and a fence;
                                        --finish drops the old slots once every new shard has started
  outboxd --version | --help

exit codes: 0 ok, 1 runtime failure, a failed check or a replay halted by a poison row, 2 usage, 3 invalid config,
4 replication slot lost, missing or unusable, 130 forced stop or an interrupted replay`;

interface Args {
  command: string;
  config: string | undefined;
  /** The boolean flags given, as `--name`. */
  flags: Set<string>;
  /** The string options given, by name without dashes (`from`). */
  values: Record<string, string>;
}

/** The flags each command takes besides -c/--config: a switch (boolean) or an option with a value (string). */
const FLAGS: Record<string, Readonly<Record<string, 'boolean' | 'string'>>> = {
  validate: { connect: 'boolean' },
  status: { json: 'boolean' },
  setup: { print: 'boolean', partitioned: 'boolean' },
  run: {},
  retire: { slot: 'string' },
  reshard: { from: 'string', finish: 'boolean' },
  replay: { from: 'string', to: 'string', where: 'string', checkpoint: 'string', 'dry-run': 'boolean' },
};

/** Parses `COMMAND [-c FILE] [--flag…] [--option VALUE…]` with node:util's parser; a bad argument is a UsageError. */
export function parseCommandLine(argv: readonly string[]): Args {
  const [command, ...rest] = argv;
  if (!command) throw new UsageError(`missing command\n${USAGE}`);
  const flags = Object.entries(FLAGS[command] ?? {});
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: false,
      options: {
        config: { type: 'string', short: 'c' },
        ...Object.fromEntries(flags.map(([f, type]) => [f, { type }])),
      },
    });
  } catch (err) {
    const code = (err as { code?: string }).code;
    const arg = /'([^']+)'/.exec((err as Error).message)?.[1] ?? '';
    const name = arg.split(/[ ,]/)[0] ?? '';
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(`${name} needs ${name === '-c' ? 'a file' : 'a value'}`);
    throw new UsageError(`unknown argument "${arg.split(' ')[0] || rest.join(' ')}" for ${command}`);
  }
  const given = parsed.values as Record<string, string | boolean | undefined>;
  const config = given.config;
  if (config === '') throw new UsageError('-c needs a file');
  const values: Record<string, string> = {};
  for (const [f, type] of flags) {
    const v = given[f];
    if (type !== 'string' || v === undefined) continue;
    if (v === '') throw new UsageError(`--${f} needs a value`);
    values[f] = v as string;
  }
  return {
    command,
    config: typeof config === 'string' ? config : undefined,
    flags: new Set(flags.filter(([f, type]) => type === 'boolean' && given[f] === true).map(([f]) => `--${f}`)),
    values,
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
        return await setupCommand(
          loadConfigFile(configFile, env),
          args.flags.has('--print'),
          process.stdout,
          args.flags.has('--partitioned'),
        );
      case 'run':
        return await run(configFile, env);
      case 'replay':
        return await replay(configFile, env, replayArgs(args.values, args.flags));
      case 'retire':
        return await retireCommand(loadConfigFile(configFile, env), args.values.slot, process.stdout);
      case 'reshard':
        return await reshardCommand(loadConfigFile(configFile, env), args.values.from, args.flags.has('--finish'), process.stdout);
      default:
        throw new UsageError(`unknown command "${args.command}"; try run, validate, status, setup, replay, retire or reshard`);
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
  const off = onStopSignals(
    log,
    () => void relay.stop(),
    'stopping: draining in-flight messages (send the signal again to force)',
    'forced exit: unconfirmed messages will be published again on the next start',
  );
  try {
    await relay.start();
    return await relay.done;
  } finally {
    off();
    await new Promise<void>((resolve) => log.flush(() => resolve()));
  }
}

async function replay(configFile: string, env: NodeJS.ProcessEnv, args: ReturnType<typeof replayArgs>): Promise<number> {
  const cfg = loadConfigFile(configFile, env);
  const log = createLogger(cfg.log.level);
  routeWarnings((w) => log.warn({ err: w }, 'Node.js warning'));
  const stop = new AbortController();
  const off = onStopSignals(
    log,
    () => stop.abort(),
    'stopping the replay once the batch in progress is confirmed and checkpointed (send the signal again to force)',
    'forced exit: the batch in progress is not checkpointed; a resumed run publishes it again',
  );
  try {
    return await replayCommand(cfg, args, log, stop.signal);
  } finally {
    off();
    await new Promise<void>((resolve) => log.flush(() => resolve()));
  }
}

/**
 * SIGTERM and SIGINT: the first one asks for a graceful stop (`graceful`), a second one exits at
 * once with ExitCode.forced. Returns the function that removes the handlers.
 */
function onStopSignals(log: Logger, graceful: () => void, stopping: string, forced: string): () => void {
  let firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    const now = Date.now();
    // The same signal delivered twice at once (to a process group, by `timeout`) is one request.
    if (firstSignalAt !== 0 && now - firstSignalAt < 1_000) return;
    if (firstSignalAt === 0) {
      firstSignalAt = now;
      log.info({ signal }, stopping);
      graceful();
    } else {
      log.warn({ signal }, forced);
      log.flush();
      process.exit(ExitCode.forced);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return () => {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  };
}
