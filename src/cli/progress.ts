// The live view of a migration while `ferry migrate --wait` waits: a progress bar with phase,
// bytes, rate and ETA (cli-progress), fed by the workflow's `progress` query.
import cliProgress from 'cli-progress';
import type { WorkflowHandle } from '@temporalio/client';
import { progressQuery, type MigrationProgress } from '../shared/messages.js';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

/** Polls the progress query until the workflow closes; draws a bar when `tty`, lines otherwise. */
export async function watchProgress(handle: WorkflowHandle, opts: { tty: boolean; intervalMs?: number; onUpdate?: (p: MigrationProgress) => void }): Promise<void> {
  const bar = opts.tty
    ? new cliProgress.SingleBar(
        {
          format: '{phase} |{bar}| {percentage}% {done}/{total} {rate}/s ETA {eta_formatted} {extra}',
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  let started = false;
  let lastLine = '';
  const done = handle.result().then(
    () => undefined,
    () => undefined,
  );
  let finished = false;
  void done.then(() => (finished = true));
  while (!finished) {
    try {
      const p = await handle.query(progressQuery);
      opts.onUpdate?.(p);
      const phase = p.stream ? `${p.phase}:${p.stream}` : p.phase;
      const extra = [p.round ? `round ${p.round}` : '', p.projectedDowntimeMs !== undefined ? `proj. downtime ${p.projectedDowntimeMs} ms` : ''].filter(Boolean).join(' ');
      const payload = { phase: phase.padEnd(22), done: formatBytes(p.bytesDone), total: formatBytes(p.bytesTotal), rate: formatBytes(p.rateBytesPerSec), extra };
      if (bar) {
        if (!started) {
          bar.start(Math.max(p.bytesTotal, 1), p.bytesDone, payload);
          started = true;
        }
        bar.setTotal(Math.max(p.bytesTotal, 1));
        bar.update(p.bytesDone, payload);
      } else {
        const line = `${phase} ${payload.done}/${payload.total} ${payload.rate}/s ${extra}`;
        if (line !== lastLine) process.stderr.write(`${line}\n`);
        lastLine = line;
      }
    } catch {
      // The workflow may have closed between polls, or not be started yet: try again.
    }
    await Promise.race([done, new Promise((r) => setTimeout(r, opts.intervalMs ?? 1000))]);
  }
  bar?.stop();
}
