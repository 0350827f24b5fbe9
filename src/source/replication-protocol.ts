import { OutboxdError } from '../errors.js';
import type { Lsn } from '../lsn.js';
import type { CoalescedSocket } from './coalesce.js';
import { PG_EPOCH_MS } from './pgoutput.js';

/**
 * The replication protocol's framing that outboxd writes itself: START_REPLICATION run as a pg
 * Submittable, and the standby status update (docs/adr/0008).
 */

/**
 * What outboxd uses of pg's Connection: the copy-both surface of a Submittable (the one
 * pg-copy-streams uses): write CopyData, pause and resume the socket, and hear that the server
 * started replication. The socket is the one outboxd gave pg (replication-socket.ts).
 */
export interface CopyConnection {
  stream: CoalescedSocket & { pause(): void; resume(): void };
  sendCopyFromChunk(chunk: Buffer): void;
  query(text: string): void;
  once(event: 'replicationStart', listener: () => void): void;
}

/**
 * START_REPLICATION as a pg Submittable: pg's public way to run a command whose messages the
 * caller handles. pg hands every CopyData message to `handleCopyData`; nothing of pg's own is
 * replaced or reached into (docs/adr/0008).
 */
export class StartReplication {
  constructor(
    readonly text: string,
    private readonly on: {
      started(connection: CopyConnection): void;
      copyData(chunk: Buffer): void;
      end(err: unknown): void;
    },
  ) {}

  submit(connection: CopyConnection): void {
    connection.once('replicationStart', () => this.on.started(connection));
    connection.query(this.text);
  }

  handleCopyData(msg: { chunk: Buffer }): void {
    this.on.copyData(msg.chunk);
  }

  handleError(err: unknown): void {
    this.on.end(err);
  }

  handleReadyForQuery(): void {
    this.on.end(null);
  }

  handleCommandComplete(): void {}
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {}
  handlePortalSuspended(): void {}
  handleCopyInResponse(): void {
    this.on.end(new OutboxdError('PG_PROTOCOL', 'START_REPLICATION answered with COPY IN'));
  }
}

/**
 * Standby status update ('r'): Int64 written, flushed and applied LSN (all the confirmed one:
 * outboxd "applies" a transaction when the broker has confirmed it), Int64 client time in
 * microseconds since 2000-01-01, Byte 1 to ask the server to reply at once.
 */
export function standbyStatusUpdate(confirmed: Lsn, ping: boolean): Buffer {
  const b = Buffer.allocUnsafe(34);
  b[0] = 0x72;
  b.writeBigUInt64BE(confirmed, 1);
  b.writeBigUInt64BE(confirmed, 9);
  b.writeBigUInt64BE(confirmed, 17);
  b.writeBigInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25);
  b[33] = ping ? 1 : 0;
  return b;
}
