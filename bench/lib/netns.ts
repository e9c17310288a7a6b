// Two network namespaces joined by a veth pair, optionally shaped with tc tbf: a private
// "LAN" for benches. Everything here is created by the bench and deleted by it.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface NetnsPair {
  a: string;
  b: string;
  addrA: string;
  addrB: string;
  destroy(): Promise<void>;
}

export async function createNetnsPair(opts: { a: string; b: string; addrA: string; addrB: string; rateMbit?: number }): Promise<NetnsPair> {
  const { a, b, addrA, addrB } = opts;
  const vA = `${a}-v`.slice(0, 15);
  const vB = `${b}-v`.slice(0, 15);
  const destroy = async () => {
    // Deleting a namespace deletes its end of the veth, and with it the pair.
    await run('ip', ['netns', 'del', a]).catch(() => {});
    await run('ip', ['netns', 'del', b]).catch(() => {});
  };
  await destroy(); // leftovers of an interrupted run
  try {
    await run('ip', ['netns', 'add', a]);
    await run('ip', ['netns', 'add', b]);
    await run('ip', ['link', 'add', vA, 'netns', a, 'type', 'veth', 'peer', 'name', vB, 'netns', b]);
    for (const [ns, dev, addr] of [[a, vA, addrA], [b, vB, addrB]] as const) {
      await run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
      await run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      if (opts.rateMbit) {
        // Both directions: tbf at the link rate, ~1 ms of burst, bounded queue.
        await run('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'root', 'tbf',
          'rate', `${opts.rateMbit}mbit`, 'burst', `${Math.max(16, Math.ceil((opts.rateMbit * 1000) / 8 / 1000) * 2)}kb`, 'latency', '50ms']);
      }
    }
    return { a, b, addrA, addrB, destroy };
  } catch (err) {
    await destroy();
    throw err;
  }
}
