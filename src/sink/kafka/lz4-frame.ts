/**
 * The LZ4 frame Kafka's lz4 batches carry, written around a raw LZ4 block compressor
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md):
 *
 *   magic 0x184D2204 (LE) · FLG · BD · HC · { block size (LE Int32, high bit: stored raw) · block }* · 0 (LE Int32)
 *
 * FLG 0x60: version 01, independent blocks (Kafka's KafkaLZ4BlockInputStream refuses dependent
 * ones), no block checksums, no content size, no content checksum: what lz4-napi's frame
 * encoder wrote, and what Java's reader, librdkafka and lz4_flex read. BD is 64 KiB for a batch
 * that fits one, else 4 MiB, as lz4-napi chose. HC is the second byte of XXH32(FLG, BD): both
 * descriptors are fixed, so are their checksums (test/unit/kafka-codecs.test.ts computes them).
 *
 * Why not lz4-napi's `compressFrameSync`: lz4_flex's frame encoder allocates its block buffers
 * (4 MiB in, 4 MiB out past 64 KiB of input) on every call, which cost more than compressing a
 * partition's batch of ~300 B events (docs/adr/0017). The block compressor allocates only its
 * output.
 */

/** A raw LZ4 block compressor that prepends the input's length as a LE Int32 (lz4_flex's compress_prepend_size). */
export type Lz4BlockCompress = (data: Buffer) => Buffer;

const MAGIC = 0x184d2204;
const FLG = 0x60;
const SMALL = { bd: 0x40, hc: 0x82, max: 64 * 1024 } as const;
const LARGE = { bd: 0x70, hc: 0x73, max: 4 * 1024 * 1024 } as const;
/** A block size's high bit: the block is stored uncompressed. */
const RAW_BLOCK = 0x80000000;

/** `data` as one LZ4 frame of independent blocks. */
export function lz4FrameCompress(data: Buffer, compressBlock: Lz4BlockCompress): Buffer {
  const d = data.length <= SMALL.max ? SMALL : LARGE;
  const blocks: Buffer[] = [];
  const raw: boolean[] = [];
  let size = 7 + 4;
  for (let at = 0; at < data.length; at += d.max) {
    const chunk = data.subarray(at, Math.min(data.length, at + d.max));
    const packed = compressBlock(chunk);
    // What does not shrink is stored as it is (the reader's block limit is the uncompressed size).
    const stored = packed.length - 4 >= chunk.length;
    const block = stored ? chunk : packed.subarray(4);
    blocks.push(block);
    raw.push(stored);
    size += 4 + block.length;
  }
  const out = Buffer.allocUnsafe(size);
  out.writeUInt32LE(MAGIC, 0);
  out[4] = FLG;
  out[5] = d.bd;
  out[6] = d.hc;
  let at = 7;
  for (let i = 0; i < blocks.length; i++) {
    const block = blocks[i] as Buffer;
    out.writeUInt32LE(raw[i] ? (block.length | RAW_BLOCK) >>> 0 : block.length, at);
    block.copy(out, at + 4);
    at += 4 + block.length;
  }
  out.writeUInt32LE(0, at);
  return out;
}
