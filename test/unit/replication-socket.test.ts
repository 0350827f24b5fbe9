import { createServer, type Server, type Socket } from 'node:net';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { ReplicationSocket, withOwnSocket } from '../../src/source/replication-socket.js';
import { WITHHELD_VALUE } from '../../src/source/pgoutput.js';
import { until } from '../harness/wait.js';
import { Wire, ch, xlogData } from './pgoutput-wire.js';

/** A loopback server playing the Postgres side; `accepted` hands over each connection. */
async function server(): Promise<{ port: number; accepted: Promise<Socket>; close(): Promise<void> }> {
  let accept: (s: Socket) => void = () => undefined;
  const accepted = new Promise<Socket>((resolve) => {
    accept = resolve;
  });
  const srv: Server = createServer((s) => accept(s));
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  open.push(srv);
  return { port, accepted, close: () => new Promise((resolve) => srv.close(() => resolve())) };
}
const open: Server[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});

const MiB = 1024 * 1024;

describe('ReplicationSocket', () => {
  it('pausing it stops reading the TCP socket, even in the middle of a huge message; resuming finishes the message', async () => {
    const { port, accepted } = await server();
    const socket = new ReplicationSocket({ tls: null, direct: false, maxValueBytes: MiB });
    const got: Buffer[] = [];
    socket.on('data', (b: Buffer) => got.push(b));
    socket.pause();
    socket.connect(port, '127.0.0.1');
    const peer = await accepted;
    // An INSERT whose one value is 64 MiB: the header, then the value in blocks (one buffer, queued
    // 256 times: the server's queue costs no memory).
    const value = 64 * MiB;
    const head = xlogData(new Wire().u8(ch('I')).u32(9).u8(ch('N')).u16(1).u8(ch('t')).u32(value).build());
    head.writeUInt32BE(head.length - 1 + value, 1);
    peer.write(head);
    const block = Buffer.alloc(value / 256, 0x78);
    for (let i = 0; i < 256; i++) peer.write(block);
    const taken = () => head.length + value - peer.writableLength;
    // Paused: the kernel's buffers fill and the server's writes wait. Wait until they do: no
    // byte taken over 300 ms (a reading socket takes 64 MiB in far less).
    let last = -1;
    const first = await until(
      'the server’s writes to stall',
      async () => {
        const now = taken();
        const stalled = now === last;
        last = now;
        return stalled && now;
      },
      10_000,
      300,
    );
    // The relay holds little of it.
    expect(first).toBeLessThan(value / 2);
    expect(socket.unreadBytes).toBeLessThanOrEqual(MiB);
    expect(got).toEqual([]);
    socket.resume();
    await until('the message', async () => got.length > 0, 10_000, 10);
    expect(Buffer.concat(got)).toEqual(xlogData(new Wire().u8(ch('I')).u32(9).u8(ch('N')).u16(1).u8(WITHHELD_VALUE).u32(value).build()));
    socket.destroy();
  });

  it('asks for TLS when postgres.url does, as pg would, and fails as pg would when the server has none', async () => {
    const { port, accepted } = await server();
    const config = withOwnSocket(
      { connectionString: `postgres://u:pw@127.0.0.1:${port}/db?sslmode=require`, application_name: 'outboxd' },
      MiB,
    );
    // pg is told there is no TLS: the socket does it.
    expect(config).toMatchObject({
      ssl: false,
      host: '127.0.0.1',
      port: String(port),
      user: 'u',
      database: 'db',
      application_name: 'outboxd',
    });
    expect(config.connectionString).toBeUndefined();
    const client = new pg.Client(config);
    const connecting = client.connect();
    const peer = await accepted;
    const first = await new Promise<Buffer>((resolve) => peer.once('data', resolve));
    expect([...first]).toEqual([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]); // SSLRequest
    peer.write('N');
    await expect(connecting).rejects.toThrow('The server does not support SSL connections');
  });

  it('sends the startup message at once when postgres.url asks for no TLS', async () => {
    const { port, accepted } = await server();
    const options = { connectionString: `postgres://u:pw@127.0.0.1:${port}/db?sslmode=disable`, replication: 'database' };
    const client = new pg.Client(withOwnSocket(options as pg.ClientConfig, MiB));
    const connecting = client.connect().catch((err: Error) => err);
    const peer = await accepted;
    const first = await new Promise<Buffer>((resolve) => peer.once('data', resolve));
    expect(first.readUInt32BE(4)).toBe(196_608); // protocol 3.0
    expect(first.toString('latin1')).toContain('replication');
    peer.destroy();
    expect(await connecting).toBeInstanceOf(Error);
  });
});
