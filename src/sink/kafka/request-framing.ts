/**
 * kafkajs's request framing (`kafkajs/src/protocol/request.js`), without its copies. kafkajs
 * writes the request header into a new Encoder, copies the whole request body after it, then
 * copies both into another Encoder behind the size: two copies of every Produce request into
 * zero-filled buffers of the next power of two (about 2.7 MB of off-heap memory and 0.2-0.3 µs
 * per message on a Kafka drain). This writes the same bytes (request header v1: size, api key,
 * api version, correlation id, client id; then the body) once:
 *
 * - in place, in front of a body that left room for it (encodeProduce leaves `HEADROOM` bytes);
 * - otherwise into one exact-size buffer, with one copy of the body.
 *
 * kafkajs-internals.ts installs it in kafkajs's place; test/unit/kafka-produce.test.ts compares the
 * bytes with kafkajs's own framing.
 */

/** What kafkajs's connection reads of a request's `encode()` result, and of a framed request. */
export interface EncodedRequest {
  readonly buf: Buffer;
  readonly buffer: Buffer;
  size(): number;
  /** Bytes free in `buf` in front of `buffer`, where the header may be written in place. */
  readonly headroom?: number;
}

/** The room encodeProduce leaves in front of a Produce body: the header with a client id of up to 50 bytes. */
export const HEADROOM = 64;

interface RequestArgs {
  correlationId: number;
  clientId: string | null | undefined;
  request: { apiKey: number; apiVersion: number; encode(): Promise<EncodedRequest> | EncodedRequest };
}

let lastId: string | null | undefined;
let lastIdBytes: Buffer | null = null;

function idBytes(clientId: string | null | undefined): Buffer | null {
  if (clientId !== lastId) {
    lastId = clientId;
    lastIdBytes = clientId == null ? null : Buffer.from(clientId, 'utf8');
  }
  return lastIdBytes;
}

/** kafkajs's `createRequest`: the framed request, whose `buffer` the connection writes to the socket. */
export async function frameRequest({
  correlationId,
  clientId,
  request: { apiKey, apiVersion, encode },
}: RequestArgs): Promise<EncodedRequest> {
  const payload = await encode();
  const body = payload.buffer;
  const id = idBytes(clientId);
  const header = 14 + (id?.length ?? 0);
  const room = payload.headroom ?? 0;
  let out: Buffer;
  if (room >= header && payload.buf.length >= room + body.length) {
    out = payload.buf.subarray(room - header, room + body.length);
  } else {
    out = Buffer.allocUnsafe(header + body.length);
    body.copy(out, header);
  }
  out.writeInt32BE(out.length - 4, 0);
  out.writeInt16BE(apiKey, 4);
  out.writeInt16BE(apiVersion, 6);
  out.writeInt32BE(correlationId, 8);
  out.writeInt16BE(id === null ? -1 : id.length, 12);
  id?.copy(out, 14);
  return { buf: out, buffer: out, size: () => out.length };
}
