import type { Logger } from '../observability/logger.js';
import type { Ingest } from '../pipeline/ingest.js';
import type { Pipeline } from '../pipeline/pipeline.js';
import { within } from '../retry.js';

/**
 * Before a graceful stop: publishes what is in flight, and finishes the transaction in progress
 * too (its published messages are then confirmed, and a clean stop leaves nothing to publish
 * twice), within `graceMs`. True when everything read was confirmed.
 */
export async function drainInFlight(pipeline: Pipeline, ingest: Ingest, graceMs: number, log: Logger): Promise<boolean> {
  const deadline = Date.now() + graceMs;
  const left = () => Math.max(0, deadline - Date.now());
  for (;;) {
    const drained = await pipeline.drain(left());
    if (pipeline.haltedBy) return false;
    if (!drained) break;
    if (!ingest.inTransaction) return true;
    // The transaction in progress: wait for its COMMIT; then its messages need publishing too.
    if (!(await within(ingest.transactionEnd(), left()))) break;
  }
  log.warn(
    { inFlight: pipeline.inFlightMessages },
    'shutdown grace expired with messages in flight; they will be published again on the next start',
  );
  return false;
}
