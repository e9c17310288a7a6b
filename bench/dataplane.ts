// Data-plane bench: Ferry (TLS + framing + LZO on a worker pool) against a plain uncompressed
// socket copy, same disk image, same run; unshaped on loopback and on a 100 Mbit/s tbf-shaped
// veth between two network namespaces. Writes bench/results/dataplane.json and prints a table.
//   npx tsx bench/dataplane.ts [--json] [--size-mib 512] [--skip-shaped]
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir, cpus } from 'node:os';
import { join } from 'node:path';
import lzo from 'lzo';
import { openFileSource } from '../src/dataplane/file-source.js';
import { sha256OfSource } from '../src/dataplane/digest.js';
import { createNetnsPair } from './lib/netns.js';

const run = promisify(execFile);
const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const opt = (name: string, dflt: string) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : dflt; };
const MiB = 1024 * 1024;
const SIZE = Number(opt('--size-mib', '512')) * MiB;
const CHUNK = MiB;
// /usr/bin (~270 MiB) fills half of the default 512 MiB disk; smaller disks get a smaller tree.
const CONTENT = opt('--content', SIZE >= 400 * MiB ? '/usr/bin' : '/usr/lib/python3.11');
const SIDE = new URL('./lib/dataplane-side.ts', import.meta.url).pathname;
const children = new Set<ReturnType<typeof spawn>>();

interface SideResult { cpuSec: number; maxRssMiB: number; elapsedMs?: number; logicalBytes?: number; wireBytes?: number; zeroBytes?: number }

function side(argv: string[], netns?: string): { ready: Promise<any>; done: Promise<SideResult> } {
  const cmd = netns ? 'ip' : process.execPath;
  const full = netns ? ['netns', 'exec', netns, process.execPath, '--import', 'tsx', SIDE, ...argv] : ['--import', 'tsx', SIDE, ...argv];
  const p = spawn(cmd, full, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.add(p);
  p.on('exit', () => children.delete(p));
  let onReady!: (v: unknown) => void;
  let onDone!: (v: SideResult) => void;
  const ready = new Promise((r) => (onReady = r));
  const done = new Promise<SideResult>((resolve, reject) => {
    onDone = resolve;
    p.on('exit', (code) => code !== 0 && reject(new Error(`${argv[0]} exited with ${code}`)));
  });
  createInterface({ input: p.stdout! }).on('line', (l) => {
    const m = JSON.parse(l);
    if (m.ready) onReady(m.ready);
    if (m.done) onDone(m.done);
  });
  return { ready, done };
}

async function transfer(mode: 'ferry' | 'baseline', src: string, dst: string, net?: { rx: string; tx: string; addr: string }) {
  await rm(dst, { force: true });
  await rm(`${dst}.state.json`, { force: true });
  const rx = side(['receiver', mode, net?.addr ?? '127.0.0.1', dst, String(SIZE)], net?.rx);
  const endpoint = await rx.ready;
  const tx = side(['sender', mode, JSON.stringify(endpoint), src, String(CHUNK), 'lzo'], net?.tx);
  const [s, r] = await Promise.all([tx.done, rx.done]);
  const elapsedSec = s.elapsedMs! / 1000;
  return {
    elapsedSec: +elapsedSec.toFixed(3),
    logicalMiBps: +(SIZE / MiB / elapsedSec).toFixed(1),
    wireBytes: s.wireBytes!,
    zeroBytes: s.zeroBytes!,
    cpuSec: { sender: +s.cpuSec.toFixed(2), receiver: +r.cpuSec.toFixed(2), total: +(s.cpuSec + r.cpuSec).toFixed(2) },
    peakRssMiB: { sender: +s.maxRssMiB.toFixed(0), receiver: +r.maxRssMiB.toFixed(0) },
  };
}

async function lzoRatio(path: string) {
  const src = await openFileSource(path);
  let nonZero = 0, compressed = 0, zero = 0;
  const zeros = Buffer.alloc(CHUNK);
  try {
    for (let off = 0; off < src.size; off += CHUNK) {
      const b = await src.read(off, Math.min(CHUNK, src.size - off));
      if (b.equals(zeros.subarray(0, b.length))) { zero += b.length; continue; }
      nonZero += b.length;
      compressed += Math.min(b.length, lzo.compress(b).length);
    }
  } finally { await src.close(); }
  return { zeroFraction: +(zero / SIZE).toFixed(3), lzoRatioNonZero: +(nonZero / compressed).toFixed(2), lzoRatioWholeDisk: +(SIZE / compressed).toFixed(2) };
}

async function main() {
  const work = await mkdtemp(join(tmpdir(), 'ferry-bench-'));
  const src = join(work, 'src.img');
  const dst = join(work, 'dst.img');
  let netns: Awaited<ReturnType<typeof createNetnsPair>> | undefined;
  try {
    await run('truncate', ['-s', String(SIZE), src]);
    // Real file-system content: a Debian tree (ELF binaries, scripts, or Python) in ext4, the rest free space.
    await run('mkfs.ext4', ['-q', '-F', '-d', CONTENT, src]);
    const content = await lzoRatio(src);
    const srcDigest = await (async () => { const s = await openFileSource(src); try { return await sha256OfSource(s); } finally { await s.close(); } })();
    const verify = async () => { const s = await openFileSource(dst); try { return (await sha256OfSource(s)) === srcDigest; } finally { await s.close(); } };

    const results: Record<string, any> = {};
    for (const m of ['ferry', 'baseline'] as const) {
      results[`loopback.${m}`] = { ...(await transfer(m, src, dst)), identical: await verify() };
    }
    if (!flag('--skip-shaped')) {
      netns = await createNetnsPair({ a: 'ferry-bench-a', b: 'ferry-bench-b', addrA: '10.213.50.1', addrB: '10.213.50.2', rateMbit: 100 });
      for (const m of ['ferry', 'baseline'] as const) {
        results[`100mbit.${m}`] = { ...(await transfer(m, src, dst, { rx: netns.b, tx: netns.a, addr: netns.addrB })), identical: await verify() };
      }
    }
    const ratios: Record<string, unknown> = {};
    for (const link of ['loopback', '100mbit']) {
      const f = results[`${link}.ferry`], b = results[`${link}.baseline`];
      if (!f || !b) continue;
      ratios[link] = {
        throughput: +(f.logicalMiBps / b.logicalMiBps).toFixed(2),
        wireBytes: +(f.wireBytes / b.wireBytes).toFixed(3),
        cpuSec: +(f.cpuSec.total / b.cpuSec.total).toFixed(2),
        senderPeakRss: +(f.peakRssMiB.sender / b.peakRssMiB.sender).toFixed(2),
      };
    }
    const report = {
      bench: 'dataplane',
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, node: process.version },
      disk: { sizeBytes: SIZE, content: `ext4 made with mkfs.ext4 -d ${CONTENT}`, ...content },
      settings: { chunkSize: CHUNK, codec: 'lzo', tls: true, workers: cpus().length, shapedLink: '100 Mbit/s tbf on a veth between netns ferry-bench-a/b' },
      notes: 'wireBytes are application bytes (Ferry: frames + headers, before TLS; baseline: raw disk bytes). Ratios are Ferry / baseline.',
      results,
      ratios,
    };
    await mkdir(new URL('./results/', import.meta.url), { recursive: true });
    await writeFile(new URL('./results/dataplane.json', import.meta.url), JSON.stringify(report, null, 2) + '\n');
    const rows = Object.entries(results).map(([k, r]) => ({
      run: k, 's': r.elapsedSec, 'MiB/s': r.logicalMiBps, 'wire MiB': +(r.wireBytes / MiB).toFixed(1), 'cpu s': r.cpuSec.total,
      'rss tx/rx MiB': `${r.peakRssMiB.sender}/${r.peakRssMiB.receiver}`, identical: r.identical,
    }));
    console.table(rows);
    console.log('disk content:', content, '\nratios (ferry/baseline):', JSON.stringify(ratios));
    if (flag('--json')) console.log(JSON.stringify(report));
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await netns?.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

await main();
