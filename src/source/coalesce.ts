/**
 * Read coalescing for the replication socket.
 *
 * Each message the walsender writes into a socket whose reader is asleep costs a wake-up on both
 * sides. Caught up with the server, the relay would wake for nearly every message, and the
 * walsender (one core, which also decodes the WAL) pays for each. So after a read that found
 * little waiting, the relay stops reading for `waitMs`: the server's writes pile up in the socket
 * buffer and arrive as one read. A read that found a lot waiting is followed at once. On the
 * bench's 1M-row drain this took the walsender from 3.5 to 2.5 CPU seconds and the relay from
 * 3.5 to 2.1 (docs/benchmarks.md), for at most `waitMs` of added latency.
 */

/** A socket read smaller than this means the relay has caught up with the server. */
export const READ_COALESCE_BYTES = 16 * 1024;

/** What coalescing needs of the socket: its reads, and how much it still holds unread. */
export interface CoalescedSocket {
  /** Bytes received and not yet handed over (replication-socket.ts counts its own and the TCP socket's). */
  readonly unreadBytes: number;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
}

/**
 * Watches `socket`'s reads and calls `setWaiting(true)` when reading should pause for `waitMs`,
 * then `setWaiting(false)`. The caller pauses and resumes the socket (it may hold it paused for
 * other reasons too).
 */
export function coalesceReads(socket: CoalescedSocket, waitMs: number, setWaiting: (waiting: boolean) => void): void {
  let waiting = false;
  socket.on('data', (chunk: Buffer) => {
    // Only when nothing else is buffered: a paused stream stops handing over the chunks it
    // already holds, so a pause with more waiting would deliver them one per wait.
    if (waiting || chunk.length >= READ_COALESCE_BYTES || socket.unreadBytes > 0) return;
    waiting = true;
    setWaiting(true);
    setTimeout(() => {
      waiting = false;
      setWaiting(false);
    }, waitMs);
  });
}
