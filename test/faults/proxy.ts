/**
 * A small TCP proxy for network faults between the relay and a service: pass traffic, add
 * latency, stall it without closing (a black hole), or cut every connection.
 */
import { type Server, type Socket, createServer, connect } from 'node:net';

export type ProxyMode = 'pass' | 'stall';

export class TcpProxy {
  private server: Server | null = null;
  private readonly pairs = new Set<{ client: Socket; upstream: Socket }>();
  private readonly held: Array<() => void> = [];
  mode: ProxyMode = 'pass';
  latencyMs = 0;
  port = 0;
  connections = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  async start(port = 0): Promise<number> {
    this.server = createServer((client) => this.accept(client));
    await new Promise<void>((resolve, reject) => {
      this.server?.once('error', reject);
      this.server?.listen(port, '127.0.0.1', () => resolve());
    });
    const addr = this.server.address();
    this.port = typeof addr === 'object' && addr ? addr.port : 0;
    return this.port;
  }

  private accept(client: Socket): void {
    this.connections++;
    const upstream = connect(this.targetPort, this.targetHost);
    const pair = { client, upstream };
    this.pairs.add(pair);
    const forward = (from: Socket, to: Socket) => {
      from.on('data', (chunk: Buffer) => {
        const send = () => {
          if (!to.destroyed) to.write(chunk);
        };
        // Pacing: the added latency the proxy simulates.
        const go = () => (this.latencyMs > 0 ? setTimeout(send, this.latencyMs) : send());
        // While stalled, bytes are held (not dropped): TCP stays open and nothing is answered.
        if (this.mode === 'stall') this.held.push(go);
        else go();
      });
    };
    forward(client, upstream);
    forward(upstream, client);
    const close = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  }

  /** Stops forwarding without closing anything, like a network that silently drops packets. */
  stall(): void {
    this.mode = 'stall';
  }

  /** Forwards again; bytes held during the stall are dropped (those connections are stale). */
  resume(): void {
    this.mode = 'pass';
    this.held.length = 0;
  }

  /** Resets every open connection (both sides see the socket close). */
  cutAll(): void {
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy();
      upstream.resetAndDestroy();
    }
    this.pairs.clear();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
