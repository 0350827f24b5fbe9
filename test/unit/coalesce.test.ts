import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type CoalescedSocket, READ_COALESCE_BYTES, coalesceReads } from '../../src/source/coalesce.js';

/**
 * A real Node stream standing in for the replication socket, paused and resumed as the relay
 * does; what it holds unread is its own buffer.
 */
function socketWithCoalescing(waitMs: number) {
  const stream = new PassThrough();
  const socket = Object.defineProperty(stream, 'unreadBytes', { get: () => stream.readableLength }) as PassThrough & CoalescedSocket;
  const received: number[] = [];
  socket.on('data', (chunk: Buffer) => received.push(chunk.length));
  const waits: boolean[] = [];
  coalesceReads(socket, waitMs, (waiting) => {
    waits.push(waiting);
    if (waiting) socket.pause();
    else socket.resume();
  });
  return { socket, received, waits };
}

/** Lets the stream hand over what it holds (its events run on the next turns of the loop). */
const settle = () => new Promise((r) => setImmediate(r));
const total = (xs: number[]) => xs.reduce((n, x) => n + x, 0);

// Only setTimeout is faked: the coalescing wait is the one clock here, so the test holds on a busy machine.
afterEach(() => {
  vi.useRealTimers();
});

describe('read coalescing', () => {
  it('waits after a small read, then hands over everything that piled up at once', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    const { socket, received, waits } = socketWithCoalescing(40);
    socket.write(Buffer.alloc(100));
    await settle();
    expect(waits).toEqual([true]);
    // Five more reads' worth arrive while the relay waits: none is handed over yet.
    for (let i = 0; i < 5; i++) socket.write(Buffer.alloc(100));
    await settle();
    expect(total(received)).toBe(100);
    // One wait later all of them are there (not one per wait, which would take 5 × 40 ms).
    vi.advanceTimersByTime(40);
    await settle();
    await settle();
    expect(total(received)).toBe(600);
    expect(waits.slice(0, 2)).toEqual([true, false]);
  });

  it('keeps reading after a large read', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout'] });
    const { socket, received, waits } = socketWithCoalescing(40);
    socket.write(Buffer.alloc(READ_COALESCE_BYTES));
    await settle();
    socket.write(Buffer.alloc(READ_COALESCE_BYTES));
    await settle();
    expect(waits).toEqual([]);
    expect(received).toHaveLength(2);
  });
});
