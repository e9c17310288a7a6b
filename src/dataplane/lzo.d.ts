// Types for the `lzo` npm package (node-lzo, minilzo 2.09 bindings), which ships none.
declare module 'lzo' {
  /** LZO1X-1 compression; output may be larger than the input for random data. */
  export function compress(input: Buffer): Buffer;
  /** lzo1x_decompress_safe into a buffer of exactly `length` bytes: never writes past it. */
  export function decompress(input: Buffer, length: number): Buffer;
  export const version: string;
}
