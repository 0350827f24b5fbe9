import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { READ_COALESCE_BYTES, coalesceReads } from '../../src/source/coalesce.js';

/** A real Node stream standing in for the replication socket, paused and resumed as the relay does. */
function socketWithCoalescing(waitMs: number) {
  const socket = new PassThrough();
  const received: Array<{ at: number; bytes: number }> = [];
  const t0 = performance.now();
  socket.on('data', (chunk: Buffer) => received.push({ at: performance.now() - t0, bytes: chunk.length }));
  const waits: boolean[] = [];
  coalesceReads(socket, waitMs, (waiting) => {
    waits.push(waiting);
    if (waiting) socket.pause();
    else socket.resume();
  });
  return { socket, received, waits };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('read coalescing', () => {
  it('waits after a small read, then hands over everything that piled up at once', async () => {
    const { socket, received, waits } = socketWithCoalescing(40);
    socket.write(Buffer.alloc(100));
    await sleep(5);
    expect(waits).toEqual([true]);
    // Five more reads' worth arrive while the relay waits.
    for (let i = 0; i < 5; i++) socket.write(Buffer.alloc(100));
    await sleep(60);
    // All of them within the first wait's end, not one per wait (which would take 5 × 40 ms).
    expect(received.reduce((n, r) => n + r.bytes, 0)).toBe(600);
    expect(received.filter((r) => r.at < 80)).toHaveLength(received.length);
  });

  it('keeps reading after a large read', async () => {
    const { socket, received, waits } = socketWithCoalescing(40);
    socket.write(Buffer.alloc(READ_COALESCE_BYTES));
    await sleep(5);
    socket.write(Buffer.alloc(READ_COALESCE_BYTES));
    await sleep(5);
    expect(waits).toEqual([]);
    expect(received).toHaveLength(2);
  });
});
