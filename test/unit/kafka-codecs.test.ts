import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { COMPRESSIONS, checkCodec, codecOf, snappyCompress, snappyDecompress } from '../../src/sink/kafka/codecs.js';

const require = createRequire(import.meta.url);
const snappy = require('snappy') as { compressSync(b: Buffer): Buffer };

/** Bytes like a batch of records: JSON, multi-byte UTF-8, a run, a few random bytes. */
function sample(size: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0, n = 0; n < size; i++) {
    const json = Buffer.from(JSON.stringify({ i, city: ['Zürich', '東京', 'Łódź 🚚'][i % 3], pad: 'z'.repeat(i % 50) }));
    parts.push(json, Buffer.from([i & 0xff, (i * 7919) & 0xff, 0, 255]));
    n += json.length + 4;
  }
  return Buffer.concat(parts).subarray(0, size);
}

describe('Kafka compression codecs', () => {
  it.each(COMPRESSIONS.filter((c) => c !== 'none'))('%s round-trips batches from empty to 4 MiB', (name) => {
    const codec = codecOf(name) as NonNullable<ReturnType<typeof codecOf>>;
    expect(() => checkCodec(name)).not.toThrow();
    for (const size of [0, 1, 100, 70_000, 4 << 20]) {
      const data = sample(size);
      const packed = codec.compress(data);
      expect(codec.decompress(packed).equals(data)).toBe(true);
      if (size >= 70_000) expect(packed.length).toBeLessThan(size / 2);
    }
  });

  it('writes the formats Kafka’s clients read: gzip, xerial snappy, an LZ4 frame, a zstd frame', () => {
    const data = sample(10_000);
    const magic = (name: 'gzip' | 'snappy' | 'lz4' | 'zstd') => (codecOf(name) as { compress(b: Buffer): Buffer }).compress(data);
    expect(magic('gzip').subarray(0, 2).toString('hex')).toBe('1f8b');
    expect(magic('snappy').subarray(0, 16).toString('hex')).toBe('82534e41505059000000000100000001');
    expect(magic('lz4').readUInt32LE(0)).toBe(0x184d2204);
    // FLG: version 01, independent blocks (what Kafka's KafkaLZ4BlockInputStream requires).
    expect(magic('lz4')[4] as number & 0xe0).toBe(0x60);
    expect(magic('zstd').readUInt32LE(0)).toBe(0xfd2fb528);
  });

  it('reads raw snappy (as librdkafka writes it) and xerial snappy of several chunks', () => {
    const data = sample(100_000);
    expect(snappyDecompress(snappy.compressSync(data)).equals(data)).toBe(true);
    const header = snappyCompress(Buffer.alloc(0)).subarray(0, 16);
    const chunks = [data.subarray(0, 32_768), data.subarray(32_768, 65_536), data.subarray(65_536)].map((c) => {
      const packed = snappy.compressSync(c);
      const length = Buffer.alloc(4);
      length.writeUInt32BE(packed.length);
      return Buffer.concat([length, packed]);
    });
    expect(snappyDecompress(Buffer.concat([header, ...chunks])).equals(data)).toBe(true);
    expect(() => snappyDecompress(Buffer.concat([header, ...chunks]).subarray(0, 40))).toThrow();
  });
});

/** XXH32 with seed 0, for inputs under 16 bytes: what an LZ4 frame's header checksum is taken from. */
function xxh32Short(bytes: number[]): number {
  const P1 = 2654435761;
  const P2 = 2246822519;
  const P3 = 3266489917;
  const P5 = 374761393;
  const rotl = (x: number, r: number) => ((x << r) | (x >>> (32 - r))) >>> 0;
  let h = (P5 + bytes.length) >>> 0;
  for (const b of bytes) h = Math.imul(rotl((h + Math.imul(b, P5)) >>> 0, 11), P1) >>> 0;
  h = Math.imul(h ^ (h >>> 15), P2) >>> 0;
  h = Math.imul(h ^ (h >>> 13), P3) >>> 0;
  return (h ^ (h >>> 16)) >>> 0;
}

/** The blocks of an LZ4 frame without checksums: [stored raw, stored length]. */
function frameBlocks(frame: Buffer): Array<[boolean, number]> {
  const blocks: Array<[boolean, number]> = [];
  for (let at = 7; ; ) {
    const size = frame.readUInt32LE(at);
    if (size === 0) {
      expect(at + 4).toBe(frame.length);
      return blocks;
    }
    const length = size & 0x7fffffff;
    blocks.push([size !== length, length]);
    at += 4 + length;
  }
}

describe('the lz4 frame (lz4-frame.ts)', () => {
  const lz4 = require('lz4-napi') as { decompressFrameSync(b: Buffer): Buffer; compressFrameSync(b: Buffer): Buffer };
  const compress = (b: Buffer) => (codecOf('lz4') as { compress(b: Buffer): Buffer }).compress(b);

  it('carries a header Kafka’s reader checks: FLG 0x60, 64 KiB blocks, the XXH32 header checksum', () => {
    for (const size of [0, 65_536, 65_537, 300_000]) {
      const frame = compress(sample(size));
      expect(frame.readUInt32LE(0)).toBe(0x184d2204);
      expect(frame[4]).toBe(0x60);
      expect(frame[5]).toBe(0x40);
      expect(frame[6]).toBe((xxh32Short([0x60, 0x40]) >>> 8) & 0xff);
      expect(frameBlocks(frame).length).toBe(Math.ceil(size / 65_536));
      expect(Math.max(0, ...frameBlocks(frame).map(([, n]) => n))).toBeLessThanOrEqual(65_536);
    }
    // The descriptor lz4-napi's own frame encoder writes for a batch under 64 KiB.
    expect(lz4.compressFrameSync(sample(1000)).subarray(4, 7)).toEqual(compress(sample(1000)).subarray(4, 7));
  });

  it('stores what does not shrink raw, in 64 KiB blocks, and lz4_flex reads every byte back', () => {
    const noise = randomBytes(50_000);
    expect(frameBlocks(compress(noise))).toEqual([[true, 50_000]]);
    expect(lz4.decompressFrameSync(compress(noise)).equals(noise)).toBe(true);
    const big = Buffer.concat([sample(3 * 65_536), randomBytes(65_536), sample(5000)]);
    const blocks = frameBlocks(compress(big));
    expect(blocks.map(([raw]) => raw)).toEqual([false, false, false, true, false]);
    expect(blocks[3]?.[1]).toBe(65_536);
    expect(lz4.decompressFrameSync(compress(big)).equals(big)).toBe(true);
    expect(frameBlocks(compress(Buffer.alloc(0)))).toEqual([]);
  });
});
