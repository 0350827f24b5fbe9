/**
 * Kafka's batch compression codecs, synchronous, in the formats Kafka's own clients write
 * (docs/adr/0017):
 * - gzip: node:zlib, level 6 (the Java client's default);
 * - snappy: `snappy` (napi-rs, binaries inside its npm packages), in the xerial framing the Java
 *   client writes (a header, then length-prefixed raw snappy chunks; here one chunk per batch);
 *   raw snappy, as librdkafka writes it, is read too;
 * - lz4: `lz4-napi` (napi-rs over lz4_flex), its block compressor inside an LZ4 *frame* of
 *   independent blocks that lz4-frame.ts writes (the frame encoder allocated 8 MiB a call);
 * - zstd: node:zlib (Node 22.15+), level 3 (the Java client's and librdkafka's default).
 *
 * The native modules load on first use: a relay without snappy or lz4 never loads them.
 */
import { createRequire } from 'node:module';
import zlib from 'node:zlib';
import { SinkError } from '../../errors.js';
import { lz4FrameCompress } from './lz4-frame.js';

export const COMPRESSIONS = ['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const;
export type Compression = (typeof COMPRESSIONS)[number];

/** The codec id in a record batch's attributes (bits 0-2), as Kafka numbers them. */
export const CODEC_ID: Readonly<Record<Compression, number>> = { none: 0, gzip: 1, snappy: 2, lz4: 3, zstd: 4 };

export interface Codec {
  compress(data: Buffer): Buffer;
  decompress(data: Buffer): Buffer;
}

const require = createRequire(import.meta.url);

interface Lz4Napi {
  /** A raw block after its input's length (LE Int32). */
  compressSync(data: Buffer): Buffer;
  decompressFrameSync(data: Buffer): Buffer;
}
interface SnappyNapi {
  compressSync(data: Buffer): Buffer;
  uncompressSync(data: Buffer, opts: { asBuffer: true }): Buffer;
}

function load<T>(name: string, codec: string): T {
  try {
    return require(name) as T;
  } catch (err) {
    throw new SinkError(
      'codec_unavailable',
      `sink.kafka.compression ${codec} needs the npm package ${name}, which did not load (${(err as Error).message.split('\n')[0]})`,
      { retriable: false, cause: err },
    );
  }
}

let lz4: Lz4Napi | undefined;
let snappy: SnappyNapi | undefined;
const lz4Lib = (): Lz4Napi => {
  lz4 ??= load<Lz4Napi>('lz4-napi', 'lz4');
  return lz4;
};
const snappyLib = (): SnappyNapi => {
  snappy ??= load<SnappyNapi>('snappy', 'snappy');
  return snappy;
};

/** The xerial snappy-java stream header: magic, version 1, compatible version 1. */
const XERIAL_HEADER = Buffer.from([0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0, 0, 0, 0, 1, 0, 0, 0, 1]);

function isXerial(data: Buffer): boolean {
  return data.length >= 16 && data.subarray(0, 8).equals(XERIAL_HEADER.subarray(0, 8));
}

/** The xerial framing of one raw snappy chunk. */
export function snappyCompress(data: Buffer): Buffer {
  const chunk = snappyLib().compressSync(data);
  const out = Buffer.allocUnsafe(20 + chunk.length);
  XERIAL_HEADER.copy(out, 0);
  out.writeUInt32BE(chunk.length, 16);
  chunk.copy(out, 20);
  return out;
}

/** Xerial-framed snappy (any number of chunks), or raw snappy. */
export function snappyDecompress(data: Buffer): Buffer {
  const lib = snappyLib();
  if (!isXerial(data)) return lib.uncompressSync(data, { asBuffer: true });
  const chunks: Buffer[] = [];
  for (let at = 16; at < data.length; ) {
    if (at + 4 > data.length) throw new RangeError('truncated xerial snappy chunk length');
    const length = data.readUInt32BE(at);
    const end = at + 4 + length;
    if (end > data.length) throw new RangeError('truncated xerial snappy chunk');
    chunks.push(lib.uncompressSync(data.subarray(at + 4, end), { asBuffer: true }));
    at = end;
  }
  return chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
}

const CODECS: Readonly<Record<Exclude<Compression, 'none'>, Codec>> = {
  gzip: { compress: (d) => zlib.gzipSync(d), decompress: (d) => zlib.unzipSync(d) },
  snappy: { compress: snappyCompress, decompress: snappyDecompress },
  lz4: { compress: (d) => lz4FrameCompress(d, lz4Lib().compressSync), decompress: (d) => lz4Lib().decompressFrameSync(d) },
  zstd: { compress: (d) => zlib.zstdCompressSync(d), decompress: (d) => zlib.zstdDecompressSync(d) },
};

const BY_ID: ReadonlyArray<Codec | undefined> = [undefined, CODECS.gzip, CODECS.snappy, CODECS.lz4, CODECS.zstd];

/** The codec with this attributes id (1 to 4), or undefined (0 is no compression). */
export function codecById(id: number): Codec | undefined {
  return BY_ID[id];
}

export function codecOf(compression: Compression): Codec | undefined {
  return compression === 'none' ? undefined : CODECS[compression];
}

/**
 * Loads the codec's library and round-trips a few bytes: a platform without the native binary
 * (or a Node without zstd) fails here, at start, with one line, not at the first batch.
 */
export function checkCodec(compression: Compression): void {
  const codec = codecOf(compression);
  if (codec === undefined) return;
  if (compression === 'zstd' && typeof zlib.zstdCompressSync !== 'function') {
    throw new SinkError('codec_unavailable', `sink.kafka.compression zstd needs Node 22.15 or later (this is ${process.version})`, {
      retriable: false,
    });
  }
  const probe = Buffer.from('outboxd codec probe outboxd codec probe');
  if (!codec.decompress(codec.compress(probe)).equals(probe)) {
    throw new SinkError('codec_unavailable', `sink.kafka.compression ${compression}: the codec does not round-trip`, { retriable: false });
  }
}
