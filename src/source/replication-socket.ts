import { isIP, Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { type ConnectionOptions, connect as tlsConnect, type TLSSocket } from 'node:tls';
import pg from 'pg';
import { parse } from 'pg-connection-string';
import { BackendFrames } from './backend-frames.js';

/**
 * The replication connection's socket, which outboxd owns so that a huge value never sits in
 * memory (docs/adr/0015).
 *
 * pg's protocol parser holds every message whole, and a row is one message: a 128 MiB value cost
 * about 384 MiB before the decoder could say it was too large to publish. pg takes the socket it
 * talks through as an option (`stream`, its public API), so the replication connection gets this
 * one: a Duplex over the TCP socket that hands pg the server's bytes through BackendFrames, which
 * drops a value over `maxValueBytes` as it arrives. pg still does everything else (start-up,
 * authentication, queries, COPY). Because the filter must see the protocol's bytes, not TLS
 * records, TLS is negotiated here, below it, exactly as pg would from postgres.url (sslmode,
 * sslrootcert, sslcert, sslkey, sslnegotiation; parsed by pg's own pg-connection-string), and pg
 * is told the connection has none.
 *
 * Pausing this stream (back-pressure, read coalescing) pauses the TCP socket at once, so the server
 * waits and nothing piles up here, however long the message in flight.
 */

/**
 * A replication connection's config: `config` (a connectionString pg would use) with the socket
 * replaced by one that withholds values over `maxValueBytes`, and TLS moved into it.
 */
export function withOwnSocket(config: pg.ClientConfig, maxValueBytes: number): pg.ClientConfig {
  const { connectionString, ...rest } = config;
  const { ssl, sslnegotiation, sslmode, sslcert, sslkey, sslrootcert, uselibpqcompat, ...parsed } = parse(connectionString ?? '');
  // What pg's ConnectionParameters does: the URL's settings win, then the environment's.
  const tls = tlsOptions(ssl === undefined ? sslFromEnvironment() : ssl);
  const direct = (sslnegotiation ?? process.env.PGSSLNEGOTIATION) === 'direct';
  return {
    ...rest,
    ...(parsed as pg.ClientConfig),
    ssl: false,
    sslnegotiation: 'postgres',
    stream: () => new ReplicationSocket({ tls, direct, maxValueBytes }),
  };
}

export interface ReplicationSocketOptions {
  /** TLS options as pg would pass them to tls.connect, or null for none. */
  readonly tls: ConnectionOptions | null;
  /** sslnegotiation=direct: TLS at once, without SSLRequest (PostgreSQL 17+). */
  readonly direct: boolean;
  readonly maxValueBytes: number;
}

/** pg's reading of PGSSLMODE, used when the URL says nothing of TLS (pg/lib/connection-parameters.js). */
function sslFromEnvironment(): unknown {
  switch (process.env.PGSSLMODE) {
    case 'disable':
      return false;
    case 'prefer':
    case 'require':
    case 'verify-ca':
    case 'verify-full':
      return true;
    case 'no-verify':
      return { rejectUnauthorized: false };
  }
  return pg.defaults.ssl;
}

/** pg's `ssl` value as tls.connect options: any true value means TLS, `no-verify` without checks. */
function tlsOptions(ssl: unknown): ConnectionOptions | null {
  if (!ssl) return null;
  if (ssl === 'no-verify') return { rejectUnauthorized: false };
  return typeof ssl === 'object' ? { ...(ssl as ConnectionOptions) } : {};
}

/** SSLRequest: Int32 length 8, Int32 80877103. */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);

/**
 * The Duplex pg talks through (what pg's Connection uses of a socket: connect, setNoDelay,
 * setKeepAlive, ref, unref, write, end, destroy, and the events connect, data, end, error, close).
 */
export class ReplicationSocket extends Duplex {
  private readonly tcp = new Socket();
  /** What the protocol is read from and written to: the TCP socket, or TLS over it. */
  private wire: Socket | TLSSocket | null = null;
  private readonly frames: BackendFrames;

  constructor(private readonly opts: ReplicationSocketOptions) {
    // A high-water mark of 0: nothing is read ahead into this stream's buffer, and pausing it
    // pauses the socket (below) instead of letting reads run on to fill a buffer.
    super({ allowHalfOpen: false, readableHighWaterMark: 0 });
    this.frames = new BackendFrames(opts.maxValueBytes, (bytes) => {
      if (!this.destroyed && !this.push(bytes)) this.wire?.pause();
    });
    this.on('pause', () => this.wire?.pause());
    // Node may emit 'resume' (and ask to read) after a pause() that came right behind a resume().
    this.on('resume', () => this.readOn());
    this.tcp.on('error', (err) => this.destroy(err));
  }

  /**
   * Bytes received and not yet read by pg, here or in the socket: read coalescing waits only
   * when there are none (coalesce.ts).
   */
  get unreadBytes(): number {
    return this.readableLength + (this.wire?.readableLength ?? 0);
  }

  /** As net.Socket's: `connect(port, host)`, or `connect(path)` for a Unix socket. */
  connect(portOrPath: number | string, host?: string): this {
    const onConnect = () => (this.opts.tls === null ? this.ready(this.tcp) : this.startTls(host));
    if (typeof portOrPath === 'string' && host === undefined) this.tcp.connect(portOrPath, onConnect);
    else this.tcp.connect(Number(portOrPath), host ?? 'localhost', onConnect);
    return this;
  }

  setNoDelay(noDelay?: boolean): this {
    this.tcp.setNoDelay(noDelay);
    return this;
  }

  setKeepAlive(enable?: boolean, initialDelayMs?: number): this {
    this.tcp.setKeepAlive(enable, initialDelayMs);
    return this;
  }

  ref(): this {
    this.tcp.ref();
    return this;
  }

  unref(): this {
    this.tcp.unref();
    return this;
  }

  /**
   * SSLRequest and the server's one-byte answer (unless sslnegotiation=direct), then TLS with the
   * options pg would have used, its server name and, for direct negotiation, ALPN "postgresql".
   */
  private startTls(host: string | undefined): void {
    const upgrade = () => {
      // In pg's order: the socket and host, then the options from the URL, then the server name.
      const options: ConnectionOptions = { socket: this.tcp, host, ...this.opts.tls };
      if (this.opts.direct) options.ALPNProtocols = ['postgresql'];
      // No SNI for an IP address (RFC 6066 section 3).
      if (host !== undefined && isIP(host) === 0) options.servername = host;
      const secure = tlsConnect(options, () => this.ready(secure));
      secure.on('error', (err) => this.destroy(err));
    };
    if (this.opts.direct) {
      upgrade();
      return;
    }
    this.tcp.once('data', (answer: Buffer) => {
      if (answer.length === 1 && answer[0] === 0x53 /* S */) upgrade();
      else
        this.destroy(
          new Error(
            answer[0] === 0x4e /* N */
              ? 'The server does not support SSL connections'
              : 'There was an error establishing an SSL connection',
          ),
        );
    });
    this.tcp.write(SSL_REQUEST);
  }

  /** The protocol starts: pg's Connection hears 'connect' and sends the startup message. */
  private ready(wire: Socket | TLSSocket): void {
    this.wire = wire;
    wire.on('data', (chunk: Buffer) => {
      try {
        this.frames.write(chunk);
      } catch (err) {
        this.destroy(err as Error);
      }
    });
    // The server's end arrives after what it sent before it; a close without one is a broken connection.
    let ended = false;
    wire.on('end', () => {
      ended = true;
      this.push(null);
    });
    wire.on('close', () => {
      if (!ended) this.destroy();
    });
    if (this.readableFlowing !== true) wire.pause();
    this.emit('connect');
  }

  override _read(): void {
    this.readOn();
  }

  /** Reads on from the socket if this stream flows (pg listens and nothing paused it). */
  private readOn(): void {
    if (this.readableFlowing === true) this.wire?.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    const wire = this.wire;
    if (wire === null) callback(new Error('replication socket: written before it connected'));
    else if (wire.write(chunk)) callback();
    else wire.once('drain', () => callback());
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.wire?.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.wire?.destroy();
    this.tcp.destroy();
    callback(err);
  }
}
