/**
 * outboxd with a discarding sink: the real Relay (source, mapper, pipeline, watermark, metrics,
 * HTTP) from dist/, with a Sink that confirms every batch at once. It measures what outboxd costs
 * without any broker. Runs as its own process so its CPU time and RSS are its own.
 *
 *   node discard-relay.js CONFIG.yaml
 */
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../src/interfaces.js';
import { DIST } from '../lib/paths.js';

type RuntimeModule = typeof import('../../src/runtime.js');
type AppModule = typeof import('../../src/app.js');
type LoadModule = typeof import('../../src/config/load.js');
type LoggerModule = typeof import('../../src/observability/logger.js');

const load = <T>(rel: string): Promise<T> => import(pathToFileURL(join(DIST, rel)).href) as Promise<T>;

const CONFIRMED: PublishOutcome = { poisoned: [] };

/** Confirms every batch immediately; keeps only a count. */
export class DiscardSink implements Sink {
  readonly type = 'stdout' as const;
  published = 0;
  async connect(): Promise<void> {}
  check(): null {
    return null;
  }
  publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    this.published += batch.length;
    return Promise.resolve(CONFIRMED);
  }
  async publishDeadLetter(_letter: DeadLetter): Promise<void> {}
  async reset(): Promise<void> {}
  async close(): Promise<void> {}
}

const file = process.argv[2];
if (!file) {
  process.stderr.write('usage: discard-relay CONFIG.yaml\n');
  process.exit(2);
}
// As main.ts does: outboxd's own runtime, before the relay is loaded (unless the bench gave flags).
(await load<RuntimeModule>('runtime.js')).bringOwnRuntime();
const [{ Relay }, { loadConfigFile }, { createLogger }] = await Promise.all([
  load<AppModule>('app.js'),
  load<LoadModule>('config/load.js'),
  load<LoggerModule>('observability/logger.js'),
]);
const cfg = loadConfigFile(file);
const log = createLogger(cfg.log.level);
const relay = new Relay(cfg, log, { sink: new DiscardSink() });
const stop = (): void => {
  void relay.stop();
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
await relay.start();
const code = await relay.done;
await new Promise<void>((resolve) => log.flush(() => resolve()));
process.exit(code);
