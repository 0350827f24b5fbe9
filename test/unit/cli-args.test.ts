import { describe, expect, it } from 'vitest';
import { parseCommandLine } from '../../src/cli.js';
import { replayArgs } from '../../src/commands/replay.js';
import { UsageError } from '../../src/errors.js';

/** The command line: switches, options with values, and one-line usage errors. */

const usage = (argv: string[]): string => {
  try {
    parseCommandLine(argv);
  } catch (err) {
    expect(err).toBeInstanceOf(UsageError);
    return (err as Error).message;
  }
  throw new Error(`parsed: ${argv.join(' ')}`);
};

describe('parseCommandLine', () => {
  it('reads replay options with their values, and its switches', () => {
    const a = parseCommandLine(['replay', '-c', 'f.yaml', '--from', '2024-01-01', '--where', "type = 'x' AND id IN ('a')", '--dry-run']);
    expect(a).toEqual({
      command: 'replay',
      config: 'f.yaml',
      flags: new Set(['--dry-run']),
      values: { from: '2024-01-01', where: "type = 'x' AND id IN ('a')" },
    });
    expect(parseCommandLine(['replay', '--to=now', '--checkpoint', 'cp.json']).values).toEqual({ to: 'now', checkpoint: 'cp.json' });
  });

  it('keeps the boolean switches of the other commands', () => {
    expect(parseCommandLine(['validate', '-c', 'f', '--connect']).flags).toEqual(new Set(['--connect']));
    expect(parseCommandLine(['setup', '--print', '--partitioned']).flags).toEqual(new Set(['--print', '--partitioned']));
  });

  it('says which option lacks its value, and refuses options of another command', () => {
    expect(usage(['replay', '-c', 'f', '--from'])).toBe('--from needs a value');
    expect(usage(['replay', '--where', ''])).toBe('--where needs a value');
    expect(usage(['run', '-c'])).toBe('-c needs a file');
    expect(usage(['run', '-c', 'f', '--from', 'x'])).toBe('unknown argument "--from" for run');
    expect(usage(['status', '--dry-run'])).toBe('unknown argument "--dry-run" for status');
  });
});

describe('replayArgs', () => {
  it('needs --from or --where: a replay never takes a whole table unasked', () => {
    expect(() => replayArgs({ to: 'now' }, new Set())).toThrow(/replay needs --from TIME or --where EXPR/);
    expect(replayArgs({ where: "type = 'x'" }, new Set(['--dry-run']))).toEqual({
      from: undefined,
      to: undefined,
      where: "type = 'x'",
      checkpoint: undefined,
      dryRun: true,
    });
  });
});
