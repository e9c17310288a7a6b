// The paper's evaluation (section VI) as a benchmark, beside the libvirt-style baseline. In the
// two-host QEMU lab, a 128 MiB guest with a 2 GiB ext4 disk of real Debian files answers a client
// every 150 ms and writes records to its disk, and moves from node-a to node-b over a migration
// link shaped to 100 Mbit/s: with Ferry (the Temporal workflow) and with QEMU's blockdev-mirror +
// migrate (what `virsh migrate --copy-storage-all` does), alternately, N runs each, a fresh guest
// every run. Writes bench/results/paper.json and the Figure 7/8 pictures next to it.
//   flock /tmp/ferry-lab.lock npm run bench -- paper [--json] [--runs 3] [--disk 2048]
import { Command, InvalidArgumentError } from 'commander';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { startQemuLab, type Lab } from '../src/labs/qemu-lab.js';
import { shapeMigrationLink } from '../src/labs/lab-network.js';
import { linkViolation, runOnce, type Method, type RunRecord, type RunSettings } from './lib/paper-runs.js';
import { PAPER, ratios, representative, summarize, throughputSeries } from './lib/paper-report.js';
import { renderFigure } from './lib/paper-plot.js';
import { startLibvirtLab, type LibvirtLab } from '../src/labs/libvirt/libvirt-lab.js';
import { runLibvirtOnce } from './lib/libvirt-runs.js';
import { pickAccelerator } from '../src/drivers/qemu/accelerator.js';

const MiB = 1024 * 1024;

function intIn(min: number, max: number) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min || n > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
    return n;
  };
}

const opts = new Command('bench-paper')
  .description("the paper's evaluation (2 GiB disk, 128 MiB guest, 100 Mbit/s) for Ferry and the libvirt-style baseline")
  .option('--json', 'end with one JSON line (the summary)')
  .option('--runs <n>', 'runs per method', intIn(1, 20), 3)
  .option('--disk <MiB>', 'guest disk size', intIn(128, 16384), 2048)
  .option('--memory <MiB>', 'guest memory', intIn(64, 2048), 128)
  .option('--link <Mbit>', 'migration link rate', intIn(1, 10000), 100)
  .option('--rate <records/s>', 'guest disk writes: 4 KiB records per second', intIn(0, 1000), 10)
  .option('--content <dir>', 'directory the ext4 disk is built from (default: /usr/share, or /usr/lib/python3.11 below 1 GiB)')
  .option('--methods <list>', 'comma-separated: ferry,baseline', 'ferry,baseline')
  .option('--sections <list>', 'comma-separated: qemu (Ferry beside the QEMU-native baseline), libvirt (Ferry\'s libvirt driver beside virsh migrate --copy-storage-all)', 'qemu,libvirt')
  .option('--libvirt-disk <MiB>', 'guest disk size in the libvirt section', intIn(128, 16384), 512)
  .option('--dir <path>', 'lab directory', '/var/tmp/ferry-bench')
  .option('--replot', 'only redraw the figures from bench/results/paper.json')
  .option('--temporal-port <port>', 'Temporal dev server port', intIn(1024, 65535), 7253)
  .parse(process.argv)
  .opts<{ replot?: boolean; json?: boolean; runs: number; disk: number; memory: number; link: number; rate: number; content?: string; methods: string; sections: string; libvirtDisk: number; dir: string; temporalPort: number }>();

const say = (s: string) => process.stderr.write(`[bench] ${s}\n`);

const methods = opts.methods.split(',').map((m) => m.trim()).filter(Boolean);
for (const m of methods) if (m !== 'ferry' && m !== 'baseline') { say(`unknown method ${JSON.stringify(m)}: use ferry and/or baseline`); process.exit(2); }
const contentDir = opts.content ?? (opts.disk >= 1024 ? '/usr/share' : '/usr/lib/python3.11');
if (!existsSync(contentDir)) { say(`content directory ${contentDir} does not exist`); process.exit(2); }

const sections = opts.sections.split(',').map((x) => x.trim()).filter(Boolean);
for (const x of sections) if (x !== 'qemu' && x !== 'libvirt') { say(`unknown section ${JSON.stringify(x)}: use qemu and/or libvirt`); process.exit(2); }

let lab: Lab | LibvirtLab | undefined;
let cleaning: Promise<void> | undefined;
function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    await shapeMigrationLink(null).catch((e) => say(`could not unshape the link: ${e}`));
    await lab?.close({ killGuests: true }).catch((e) => say(`lab close: ${e}`));
  })();
  return cleaning;
}
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanup().finally(() => process.exit(130)));

async function main(): Promise<number> {
  const t0 = Date.now();
  const runs: RunRecord[] = [];
  if (sections.includes('qemu')) await qemuSection(runs);
  if (sections.includes('libvirt')) await libvirtSection(runs);
  return report(runs, t0);
}

async function qemuSection(runs: RunRecord[]): Promise<void> {
  lab = await startQemuLab({ dir: opts.dir, linkMbit: opts.link, temporalPort: opts.temporalPort, log: (l) => say(`lab: ${l}`) });
  await lab.startWorkers();
  const settings: RunSettings = { diskMiB: opts.disk, memoryMiB: opts.memory, rate: opts.rate, contentDir, probeMs: 150, marginS: 5, linkMbit: opts.link, log: say };
  // Alternate the methods so drift on a shared machine hits both alike.
  for (let i = 1; i <= opts.runs; i++) {
    for (const m of methods as Method[]) {
      const r = await runOnce(lab as Lab, m, i, settings, !runs.some((x) => x.content));
      runs.push(r);
      sayRun(r);
    }
  }
  // One lab at a time on this machine: the libvirt section uses the same namespaces.
  await cleanup();
  cleaning = undefined;
  lab = undefined;
}

function sayRun(r: RunRecord): void {
  say(`${r.instanceId}: ${r.ok ? `total ${(r.totalMs / 1000).toFixed(1)} s, paused ${r.downtimeMs} ms, client gap ${r.clientGapMs} ms, ${(r.bytesOnWire.total / MiB).toFixed(1)} MiB on the wire` : `failed: ${r.error}`}`);
}

const libvirtContent = existsSync('/usr/lib/python3.11') ? '/usr/lib/python3.11' : contentDir;

/** Ferry's libvirt driver beside `virsh migrate --live --copy-storage-all`: same guest, link and workload. */
async function libvirtSection(runs: RunRecord[]): Promise<void> {
  const l = await startLibvirtLab({ dir: `${opts.dir}-libvirt`, linkMbit: opts.link, temporalPort: opts.temporalPort, log: (x) => say(`lab: ${x}`) });
  lab = l;
  await l.startWorkers();
  const settings: RunSettings = { diskMiB: opts.libvirtDisk, memoryMiB: opts.memory, rate: opts.rate, contentDir: libvirtContent, probeMs: 150, marginS: 5, linkMbit: opts.link, log: say };
  for (let i = 1; i <= opts.runs; i++) {
    for (const m of ['ferry-libvirt', 'virsh'] as const) {
      const r = await runLibvirtOnce(l, m, i, settings);
      runs.push(r);
      sayRun(r);
    }
  }
}

async function report(runs: RunRecord[], t0: number): Promise<number> {
  const content = runs.find((r) => r.content)?.content;
  const ferry = summarize('ferry', runs);
  const baseline = summarize('baseline', runs);
  const report = {
    bench: 'paper',
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, node: process.version, accel: await pickAccelerator() },
    setup: {
      diskBytes: opts.disk * MiB,
      memoryMiB: opts.memory,
      linkMbit: opts.link,
      runs: opts.runs,
      guestWrites: `${opts.rate} records/s of 4 KiB (${((opts.rate * 4) / 1024).toFixed(3)} MiB/s)`,
      client: 'one request every 150 ms, 3 s timeout, tried on both hosts (src/labs/guest-client.ts)',
      disk: { content: `ext4 built with mkfs.ext4 -d ${contentDir}`, ...content },
      ferryOptions: 'defaults: LZO, 1 MiB chunks, TLS, downtime budget 2000 ms',
      baselineOptions: 'blockdev-mirror sync=full to the destination NBD export, migrate with downtime-limit 300 ms (libvirt default)',
    },
    definitions: {
      totalMs: 'Ferry: the workflow\'s totalMs (validate to done, cleanup included); baseline: first QMP command to the destination running',
      downtimeMs: 'wall time from the source pausing to the destination running (Ferry: memory switchover + final disk sync; baseline: switchover + mirror completion)',
      qemuDowntimeMs: 'QEMU\'s own `downtime` from query-migrate (memory switchover only)',
      clientGapMs: 'longest gap between two answered client requests (what a user sees)',
      bytesOnWire: 'kernel byte counters of mig0 in node-a, tx + rx, before -> after the migration (headers, TLS, acks, memory and disk)',
      diskWireBytes: 'Ferry\'s own count of disk frames sent',
    },
    paper: PAPER,
    ferry,
    baseline,
    ratios: ratios(ferry, baseline),
    libvirt: sections.includes('libvirt') ? libvirtReport(runs) : undefined,
    runs: runs.map((r) => ({ ...r, throughput: throughputSeries(r) })),
    benchMs: Date.now() - t0,
  };

  const out = new URL('./results/', import.meta.url);
  await mkdir(out, { recursive: true });
  // A run of one section keeps its own file: the full run's paper.json (and its figures) stay.
  const file = sections.includes('qemu') && sections.includes('libvirt') ? 'paper.json' : `paper.${sections.join('-')}.json`;
  await writeFile(new URL(file, out), `${JSON.stringify(report, null, 1)}\n`);
  if (sections.includes('qemu')) await writeFigures(runs, `${opts.memory} MiB guest, ${opts.disk} MiB disk (${contentDir}), ${opts.link} Mbit/s link, QEMU TCG; median run of ${opts.runs}`);

  const s = (ms: number) => (Number.isFinite(ms) ? (ms / 1000).toFixed(2) : '-');
  // Every run, both sections.
  console.table(
    runs.map((r) => ({
      run: r.instanceId, ok: r.ok, 'total s': s(r.totalMs), 'paused s': s(r.downtimeMs), 'qemu downtime ms': r.qemuDowntimeMs ?? '-',
      'client gap s': s(r.clientGapMs), 'wire MiB': +(r.bytesOnWire.total / MiB).toFixed(1), 'ferry disk MiB': r.diskWireBytes !== undefined ? +(r.diskWireBytes / MiB).toFixed(1) : '-',
      'memory MiB': +(r.memoryBytes / MiB).toFixed(1),
    })),
  );
  if (sections.includes('qemu')) {
    console.table(
      Object.fromEntries(
        ([['ferry', ferry], ['baseline', baseline]] as const).map(([k, v]) => [k, { 'total s': s(v.totalMs), 'paused s': s(v.downtimeMs), 'client gap s': s(v.clientGapMs), 'wire MiB': +(v.bytesOnWire / MiB).toFixed(1), 'link Mbit/s busy': v.linkMbitWhileBusy, 'cpu busy': v.cpuBusyDuring }]),
      ),
    );
    console.log('paper: total 280 s, downtime 5 s; ratios:', JSON.stringify(report.ratios));
  }
  if (report.libvirt) {
    const lv = report.libvirt;
    console.table({ 'ferry (libvirt driver)': lv.ferry, 'virsh --copy-storage-all': lv.virsh }, ['runs', 'totalMs', 'downtimeMs', 'clientGapMs', 'bytesOnWire']);
    console.log('libvirt section, ferry / virsh:', JSON.stringify(lv.ferryOverVirsh));
  }
  if (content) console.log(`disk: ${(content.zeroFraction * 100).toFixed(1)}% zero, LZO ratio ${content.lzoRatioNonZero} on the rest (${content.lzoRatioWholeDisk} whole disk)`);
  if (opts.json) {
    const { runs: _runs, ...summary } = report;
    console.log(JSON.stringify(summary));
  }
  return runs.every((r) => r.ok) ? 0 : 1;
}

/** The libvirt section: medians per method and Ferry's ratios to `virsh migrate --copy-storage-all`. */
function libvirtReport(runs: RunRecord[]) {
  const ferry = summarize('ferry-libvirt', runs);
  const virsh = summarize('virsh', runs);
  const ratio = (a: number, b: number) => (b > 0 && Number.isFinite(a) ? +(a / b).toFixed(3) : null);
  return {
    setup: {
      diskBytes: opts.libvirtDisk * MiB,
      disk: `one raw virtio disk, ext4 built with mkfs.ext4 -d ${libvirtContent} (smaller than the QEMU section's: libvirt's copy is slow under TCG)`,
      guest: 'defined by virsh from a plain domain XML (src/labs/libvirt/lab-domain.ts), started by virsh',
      ferryOptions: 'defaults (LZO, TLS disk streams, memory through Ferry\'s TLS tunnel); the domain imported by ferry node sync',
      virshOptions: 'virsh migrate --live --copy-storage-all --persistent --undefinesource, plain TCP memory and NBD streams (libvirt\'s defaults), destination disk pre-created',
      downtime: 'Ferry: source paused to destination running (final disk round, switchover, resume); virsh: libvirt\'s Total downtime from domjobinfo --completed',
    },
    ferry,
    virsh,
    ferryOverVirsh: {
      totalMs: ratio(ferry.totalMs, virsh.totalMs),
      downtimeMs: ratio(ferry.downtimeMs, virsh.downtimeMs),
      clientGapMs: ratio(ferry.clientGapMs, virsh.clientGapMs),
      bytesOnWire: ratio(ferry.bytesOnWire, virsh.bytesOnWire),
    },
  };
}

const RESULTS = new URL('./results/', import.meta.url);

/** Figures 7 and 8 from the median run of each method. */
async function writeFigures(runs: RunRecord[], subtitle: string): Promise<void> {
  const shown = (['ferry', 'baseline'] as const).map((m) => representative(m, runs)).filter((r): r is RunRecord => !!r);
  if (!shown.length) return;
  await writeFile(new URL('paper.fig7-throughput.svg', RESULTS), await renderFigure('throughput', shown, subtitle));
  await writeFile(new URL('paper.fig8-response.svg', RESULTS), await renderFigure('response', shown, subtitle));
}

/** `--replot`: redraws the figures from bench/results/paper.json without running anything. */
async function replot(): Promise<number> {
  const report = JSON.parse(await readFile(new URL('paper.json', RESULTS), 'utf8')) as { setup: { memoryMiB: number; diskBytes: number; linkMbit: number; runs: number; disk: { content: string } }; runs: RunRecord[] };
  const s = report.setup;
  // Runs recorded before the shaping check existed get it now; the medians are recomputed.
  for (const r of report.runs) {
    const v = r.ok ? linkViolation(r, s.linkMbit) : undefined;
    if (v) Object.assign(r, { ok: false, error: v });
  }
  const ferry = summarize('ferry', report.runs);
  const baseline = summarize('baseline', report.runs);
  Object.assign(report, { ferry, baseline, ratios: ratios(ferry, baseline) });
  await writeFile(new URL('paper.json', RESULTS), `${JSON.stringify(report, null, 1)}\n`);
  await writeFigures(report.runs, `${s.memoryMiB} MiB guest, ${s.diskBytes / MiB} MiB disk (${s.disk.content.replace(/^.* -d /, '')}), ${s.linkMbit} Mbit/s link, QEMU TCG; median run of ${s.runs}`);
  say('figures redrawn from bench/results/paper.json');
  return 0;
}

(opts.replot ? replot() : main())
  .catch((err) => {
    say(`failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    return 1;
  })
  .then(async (code) => {
    await cleanup();
    process.exit(code);
  });
