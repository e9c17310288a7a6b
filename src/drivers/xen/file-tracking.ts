// Write tracking under a running guest's image file. xl serves a raw file to a PV/PVH guest
// through blkback on a loop device that its hotplug script attached; that loop device is bound to
// the guest, and a loop device has no table to swap, so nothing can be put under it. What can
// watch it from outside is the kernel's block trace: `blktrace -a write` on the loop device
// records every write request (sector, length) with no change to the I/O path.
//
// Why a round is never short (measured, docs/xen.md): a write's events are logged after the write
// reached the file, so a block listed in a round and read after it is never stale. The kernel
// hands events to blktrace a relay sub-buffer at a time, so events of the last few writes may not
// be in the output yet when a round is cut: they land in a later round (resent, never lost). The
// final round runs once the guest is gone from this host, and stopping blktrace first writes out
// everything it holds. Sub-buffers are one page (4 KiB, a dozen writes), so rounds lag little; 256
// of them per CPU absorb bursts, and the kernel's dropped-event counter is checked every round:
// a dropped event would be a lost write, so it fails the migration (rolled back).
//
// The trace runs as a daemon (start-stop-daemon, pid file in the instance's state folder), so it
// outlives the worker's SSH session and a worker restart; its per-CPU output files are read from
// the offsets the last round stopped at (kept in the state file).
import { runOk, type Executor } from './executor.js';
import { FerryError, ErrorTypes } from '../../shared/errors.js';
import { normalizeExtents, type Extent } from '../../shared/extents.js';
import { loopsOf } from './era-tracking.js';
import { readState, writeState, type DiskTracker, type TrackerContext } from './disk-tracker.js';

const BLKTRACE = '/usr/sbin/blktrace';
const RECORD_BYTES = 48;
const MAGIC = 0x65617400;
/** Category bits of `action` (include/uapi/linux/blktrace_api.h), above BLK_TC_SHIFT = 16. */
const TC_WRITE = 1 << 1;
const TC_NOTIFY = 1 << 10;
const TC_DISCARD = 1 << 13;

/**
 * Parses blktrace's binary records (struct blk_io_trace, host byte order: little-endian here) from
 * `buf`. Returns the extents of every write or discard event, and where the next parse must start:
 * blktrace grows its output files in chunks ahead of the data (a zero tail), and a record may be
 * seen half-copied at the end, so the last record is read again next time (a superset, never less).
 */
export function parseBlktrace(buf: Buffer, diskBytes: number): { extents: Extent[]; consumed: number } {
  const extents: Extent[] = [];
  let off = 0;
  let last = 0;
  while (off + RECORD_BYTES <= buf.length) {
    const magic = buf.readUInt32LE(off);
    if (magic === 0) break; // the zero tail: not written yet
    if ((magic & 0xffffff00) >>> 0 !== MAGIC) {
      throw new FerryError(ErrorTypes.DriverError, `blktrace output is not in the expected format at byte ${off} (magic 0x${magic.toString(16)}): write tracking cannot be trusted`);
    }
    const pduLen = buf.readUInt16LE(off + 46);
    if (off + RECORD_BYTES + pduLen > buf.length) break;
    const sector = Number(buf.readBigUInt64LE(off + 16));
    const bytes = buf.readUInt32LE(off + 24);
    const category = buf.readUInt32LE(off + 28) >>> 16;
    if (!(category & TC_NOTIFY) && category & (TC_WRITE | TC_DISCARD) && bytes > 0) {
      const offset = sector * 512;
      if (offset < diskBytes) extents.push({ offset, length: Math.min(bytes, diskBytes - offset) });
    }
    last = off;
    off += RECORD_BYTES + pduLen;
  }
  return { extents: normalizeExtents(extents), consumed: last };
}

interface FileState {
  loop: string;
  /** starts[k]: where round k + 1 starts reading each per-CPU trace file (bytes). */
  starts: Record<string, number>[];
  /** The final round stopped the trace (so its retry finds it gone). */
  stopped?: boolean;
}

export function fileTracker(c: TrackerContext): DiskTracker {
  const stateFile = `${c.dir}/track-${c.disk.vdev}.json`;
  const traceDir = `${c.dir}/trace-${c.disk.vdev}`;
  const pidFile = `${c.dir}/blktrace-${c.disk.vdev}.pid`;
  const daemon = (...args: string[]) => c.ex.run('start-stop-daemon', [...args, '--pidfile', pidFile]);
  const running = async () => (await daemon('--status')).code === 0;
  const traceEnabled = async (loop: string) => (await c.ex.run('cat', [`/sys/block/${loop.replace('/dev/', '')}/trace/enable`])).stdout.trim() === '1';

  /** The one loop device xl attached for the file. */
  async function guestLoop(): Promise<string | string> {
    const loops = await loopsOf(c.ex, c.disk.path);
    if (loops.length !== 1) return `${c.disk.path} is attached to ${loops.length} loop devices (${loops.join(', ') || 'none'}); Ferry tracks a file disk through the one loop device xl made for it`;
    return loops[0]!;
  }

  return {
    async refusal() {
      if ((await readState(c.ex, stateFile)) !== null) return null;
      if ((await c.ex.run('test', ['-x', BLKTRACE])).code !== 0) return `blktrace is not installed on this host (apt-get install blktrace): it tracks writes under file disks`;
      if ((await c.ex.run('test', ['-d', '/sys/kernel/debug/block'])).code !== 0) return `debugfs is not mounted at /sys/kernel/debug (mount -t debugfs debugfs /sys/kernel/debug): blktrace needs it`;
      const loop = await guestLoop();
      if (!loop.startsWith('/dev/loop')) return loop;
      if (await traceEnabled(loop)) return `${loop} (${c.disk.path}) is already being traced by someone else: only one block trace per device`;
      return null;
    },

    async start() {
      let st = await readState<FileState>(c.ex, stateFile);
      if (!st || !(await running())) {
        // A fresh start (or one after a trace that is gone): a new trace over the loop device xl
        // serves the file from now, read from its first byte.
        const loop = await guestLoop();
        if (!loop.startsWith('/dev/loop')) throw new FerryError(ErrorTypes.DriverError, loop);
        st = { loop, starts: [{}] };
        await runOk(c.ex, 'rm', ['-rf', '--', traceDir]);
        await runOk(c.ex, 'mkdir', ['-p', traceDir]);
        await writeState(c.ex, stateFile, st);
        await runOk(c.ex, 'start-stop-daemon', ['--start', '--background', '--make-pidfile', '--pidfile', pidFile, '--exec', BLKTRACE, '--', '-d', st.loop, '-a', 'write', '-b', '4', '-n', '256', '-D', traceDir, '-o', 'trace']);
      }
      // Writes count only once the kernel traces the device: wait for it before the bulk copy reads.
      const deadline = Date.now() + 15_000;
      while (!(await traceEnabled(st.loop))) {
        if (!(await running())) throw new FerryError(ErrorTypes.DriverError, `blktrace on ${st.loop} (${c.disk.vdev} of ${c.id}) exited at start; see ${traceDir}`);
        if (Date.now() > deadline) throw new FerryError(ErrorTypes.DriverError, `blktrace on ${st.loop} did not start tracing within 15 s`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },

    async round(n: number, final: boolean): Promise<Extent[]> {
      const st = await readState<FileState>(c.ex, stateFile);
      if (!st) throw new FerryError(ErrorTypes.DriverError, `dirty tracking of ${c.disk.vdev} of ${c.id} is not started`);
      if (n > st.starts.length) throw new FerryError(ErrorTypes.DriverError, `round ${n} of ${c.disk.vdev} asked before round ${st.starts.length}`);
      const lost = (why: string) =>
        new FerryError(ErrorTypes.DriverError, `blktrace on ${st.loop} (${c.disk.vdev} of ${c.id}) ${why}: writes may be unknown, so the migration cannot go on. Retry when the guest writes less`);
      if (await running()) {
        // Read before any stop: blktrace's exit removes the counter.
        const dropped = (await runOk(c.ex, 'cat', [`/sys/kernel/debug/block/${st.loop.replace('/dev/', '')}/dropped`])).trim();
        if (dropped !== '0') throw lost(`dropped ${dropped} events`);
        if (final) {
          // SIGINT: blktrace writes out every buffered event, then exits. No KILL: that would lose them.
          const r = await daemon('--stop', '--signal', 'INT', '--retry', 'INT/30');
          if (r.code !== 0) throw new FerryError(ErrorTypes.DriverError, `blktrace on ${st.loop} did not stop within 30 s after SIGINT: ${r.stderr.trim()}`);
          st.stopped = true;
          await writeState(c.ex, stateFile, st);
        }
      } else if (!(final && st.stopped)) {
        // Only the final round's retry (the trace stopped by its first attempt) may find it gone.
        throw lost('stopped while the guest runs');
      }
      const from = st.starts[n - 1]!;
      const to: Record<string, number> = {};
      const files = (await runOk(c.ex, 'ls', ['-1', traceDir])).split('\n').filter((f) => /^trace\.blktrace\.\d+$/.test(f));
      const all: Extent[] = [];
      for (const f of files) {
        const path = `${traceDir}/${f}`;
        const size = Number((await runOk(c.ex, 'stat', ['-c', '%s', '--', path])).trim());
        const start = from[f] ?? 0;
        const fh = await c.ex.openFile(path, 'r');
        try {
          const { extents, consumed } = parseBlktrace(size > start ? await fh.read(start, size - start) : Buffer.alloc(0), c.disk.bytes);
          all.push(...extents);
          to[f] = start + consumed;
        } finally {
          await fh.close();
        }
      }
      // A retry of round n reads from the same starts again: at least what the first attempt saw.
      st.starts = [...st.starts.slice(0, n), to];
      await writeState(c.ex, stateFile, st);
      return normalizeExtents(all);
    },

    async readPath() {
      return c.disk.path;
    },

    async stop() {
      const st = await readState<FileState>(c.ex, stateFile);
      await daemon('--stop', '--signal', 'INT', '--retry', 'INT/20/KILL/2', '--oknodo', '--remove-pidfile');
      // A blktrace killed hard leaves the kernel's trace set up: tear it down.
      if (st && (await traceEnabled(st.loop))) await c.ex.run(BLKTRACE, ['-k', '-d', st.loop]);
      await runOk(c.ex, 'rm', ['-rf', '--', traceDir, stateFile, pidFile]);
    },
  };
}
