/** Builds pgoutput (protocol v1) messages the way the server encodes them. */
export class Wire {
  private parts: Buffer[] = [];
  u8(v: number): this {
    this.parts.push(Buffer.from([v]));
    return this;
  }
  u16(v: number): this {
    return this.fixed(2, (b) => b.writeUInt16BE(v));
  }
  u32(v: number): this {
    return this.fixed(4, (b) => b.writeUInt32BE(v));
  }
  u64(v: bigint): this {
    return this.fixed(8, (b) => b.writeBigUInt64BE(v));
  }
  private fixed(size: number, write: (b: Buffer) => void): this {
    const b = Buffer.alloc(size);
    write(b);
    this.parts.push(b);
    return this;
  }
  str(s: string): this {
    this.parts.push(Buffer.from(`${s}\0`, 'utf8'));
    return this;
  }
  text(s: string): this {
    const b = Buffer.from(s, 'utf8');
    return this.u8(0x74).u32(b.length).bytes(b);
  }
  bytes(b: Buffer): this {
    this.parts.push(b);
    return this;
  }
  build(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export const ch = (c: string): number => c.charCodeAt(0);

export const relationMsg = (oid: number, schema: string, name: string, cols: Array<[string, number]>): Buffer => {
  const w = new Wire().u8(ch('R')).u32(oid).str(schema).str(name).u8(ch('d')).u16(cols.length);
  for (const [col, type] of cols) w.u8(0).str(col).u32(type).u32(0xffffffff);
  return w.build();
};

/** A backend protocol message: Byte1 type, Int32 length (counting itself), payload. */
export const backend = (type: string, payload: Buffer): Buffer => {
  const header = Buffer.alloc(5);
  header[0] = ch(type);
  header.writeUInt32BE(4 + payload.length, 1);
  return Buffer.concat([header, payload]);
};

/** CopyData carrying XLogData ('w', start, end, send time) around one pgoutput message. */
export const xlogData = (msg: Buffer): Buffer => backend('d', Buffer.concat([Buffer.from([0x77]), Buffer.alloc(24, 7), msg]));
