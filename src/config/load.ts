import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument } from 'yaml';
import { ConfigError } from '../errors.js';
import { interpolate } from './interpolate.js';
import { registerSecrets } from '../redact.js';
import { type Config, compileConfig } from './config.js';
import { ConfigSchema } from './schema.js';
import { secretsIn } from './secrets.js';

/** Reads, interpolates and validates a config file. Throws ConfigError with a one-line message. */
export function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  return parseConfig(text, env);
}

export function parseConfig(text: string, env: NodeJS.ProcessEnv = process.env): Config {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { prettyErrors: false, uniqueKeys: true, lineCounter });
  const first = doc.errors[0];
  if (first) {
    const pos = lineCounter.linePos(first.pos[0]);
    throw new ConfigError('', `YAML syntax error${pos ? ` at line ${pos.line}, column ${pos.col}` : ''}: ${first.message.split('\n')[0]}`);
  }
  const expanded = interpolate(doc.toJS({ maxAliasCount: 100 }), env);
  // Before validation, whose errors may print a value: from here on the secrets never leave the
  // process in an error, a log line or a probe body (secret files register when they are read).
  registerSecrets(secretsIn(ConfigSchema, expanded));
  return compileConfig(expanded);
}
