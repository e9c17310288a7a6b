// One side of a bench transfer, in its own process (and possibly its own network namespace), so
// its CPU time and peak RSS are its own. Prints one JSON line of results on stdout.
//   receiver <ferry|baseline> <host> <diskPath> <diskSize>     -> {"ready": endpoint} then {"done": stats}
//   sender   <ferry|baseline> <endpointJson> <srcPath> <chunk> <codec>   -> {"done": stats}
import net from 'node:net';
import { open } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { DiskReceiver } from '../../src/dataplane/receiver.js';
import { sendStream } from '../../src/dataplane/sender.js';
import { openFileSource } from '../../src/dataplane/file-source.js';
import type { Codec, ReceiverEndpoint } from '../../src/dataplane/types.js';

const [role, mode, ...rest] = process.argv.slice(2);
const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
const usage = () => {
  const u = process.resourceUsage();
  return { cpuSec: (u.userCPUTime + u.systemCPUTime) / 1e6, maxRssMiB: u.maxRSS / 1024 };
};

if (role === 'receiver') {
  const [host, diskPath, sizeText] = rest;
  const diskSize = Number(sizeText);
  if (mode === 'ferry') {
    const r = await DiskReceiver.open({
      host, port: 0, token: randomBytes(16).toString('hex'), diskPath, diskSize, tls: true, stateFile: `${diskPath}.state.json`,
      onEvent: (e) => {
        if (e.event === 'stream-end') void r.close().then(() => { print({ done: usage() }); process.exit(0); });
      },
    });
    print({ ready: r.endpoint() });
  } else {
    // Baseline: what `nc host port > disk` does. Plain TCP, no framing, no checks, one fdatasync at the end.
    const fh = await open(diskPath, 'w');
    await fh.truncate(diskSize);
    const server = net.createServer((s) => {
      let off = 0;
      s.on('data', (d: Buffer) => {
        s.pause();
        void fh.write(d, 0, d.length, off).then(() => { off += d.length; s.resume(); });
      });
      s.on('end', async () => {
        await fh.datasync();
        s.end();
        await fh.close();
        server.close();
        print({ done: usage() });
        process.exit(0);
      });
    });
    server.listen(0, host, () => print({ ready: { host, port: (server.address() as net.AddressInfo).port, token: '' } }));
  }
} else if (role === 'sender') {
  const [epText, srcPath, chunkText, codec] = rest;
  const endpoint = JSON.parse(epText) as ReceiverEndpoint;
  const t0 = performance.now();
  if (mode === 'ferry') {
    const source = await openFileSource(srcPath);
    const p = await sendStream({
      endpoint, source, plan: { streamId: 'bulk', extents: [{ offset: 0, length: source.size }] },
      options: { chunkSize: Number(chunkText), codec: codec as Codec },
    });
    await source.close();
    print({ done: { ...usage(), elapsedMs: performance.now() - t0, logicalBytes: p.doneBytes, wireBytes: p.wireBytes, zeroBytes: p.zeroBytes } });
  } else {
    const source = await openFileSource(srcPath);
    const s = net.connect({ host: endpoint.host, port: endpoint.port });
    await new Promise((r) => s.once('connect', r));
    const step = Number(chunkText);
    for (let off = 0; off < source.size; off += step) {
      const buf = await source.read(off, Math.min(step, source.size - off));
      if (!s.write(buf)) await new Promise((r) => s.once('drain', r));
    }
    s.end();
    await new Promise((r) => s.once('close', r)); // the receiver closes after its fdatasync
    await source.close();
    print({ done: { ...usage(), elapsedMs: performance.now() - t0, logicalBytes: source.size, wireBytes: source.size, zeroBytes: 0 } });
  }
} else {
  console.error('usage: dataplane-side.ts receiver|sender ferry|baseline ...');
  process.exit(2);
}
