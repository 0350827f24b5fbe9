import type { OutboxMessage } from '../../src/interfaces.js';

/** A small message of one transaction for sink unit tests: id `m<i>`, a one-byte payload, `i` its index. */
export function testMessage(i: number, key: string, destination = 'd'): OutboxMessage {
  return {
    id: `m${i}`,
    destination,
    key,
    aggregateType: 'a',
    type: 'T',
    payload: 'x',
    contentType: 'text/plain',
    headers: { id: `m${i}` },
    correlationId: null,
    replyTo: null,
    txn: { xid: 1, commitLsn: 1n, commitTimeMs: 0, lsnText: '0/1', xidText: '1' },
    index: i,
    sizeBytes: 10,
  };
}
