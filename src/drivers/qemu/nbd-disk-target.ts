// A destination disk reached through an NBD server (qemu-nbd serving a qcow2 or raw image, see
// qemu-nbd.ts): the receiver writes image formats it cannot write as a plain file this way.
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import type { DiskTarget } from '../../dataplane/types.js';
import { NbdClient } from './nbd-client.js';

const ZEROS = Buffer.alloc(64 * 1024);

function isAllZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += ZEROS.length) {
    const part = buf.subarray(i, i + ZEROS.length);
    if (!part.equals(ZEROS.subarray(0, part.length))) return false;
  }
  return true;
}

export class NbdDiskTarget implements DiskTarget {
  private constructor(private readonly client: NbdClient) {}

  static async open(socketPath: string, exportName = ''): Promise<NbdDiskTarget> {
    const client = await NbdClient.connect({ socketPath, exportName });
    if (client.readOnly) {
      await client.close();
      throw new FerryError(ErrorTypes.BadInput, `the NBD export at ${socketPath} is read-only: serve the destination image writable`);
    }
    return new NbdDiskTarget(client);
  }

  async size(): Promise<number> {
    return this.client.size;
  }

  async truncate(size: number): Promise<void> {
    if (size === this.client.size) return;
    throw new FerryError(
      ErrorTypes.BadInput,
      `cannot resize the destination disk from ${this.client.size} to ${size} bytes: an NBD export has a fixed size; create the image with the disk's size (qemu-img create -f qcow2 FILE ${size})`,
    );
  }

  /** Like a local file: a read that reaches the end stops short there. */
  async read(offset: number, length: number): Promise<Buffer> {
    if (Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0) {
      length = Math.max(0, Math.min(length, this.client.size - offset));
    }
    return this.client.read(offset, length);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    // Zeros as WRITE_ZEROES: nothing on the socket, and the server may leave the range unallocated.
    if (data.length && this.client.canWriteZeroes && isAllZero(data)) return this.client.writeZeroes(offset, data.length);
    return this.client.write(offset, data);
  }

  datasync(): Promise<void> {
    return this.client.flush();
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
