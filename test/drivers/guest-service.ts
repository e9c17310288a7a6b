// Talks to the lab guest's request port (src/labs/guest/ferry-handler): one line in, one line out.
import { createConnection } from 'node:net';

export interface GuestStat {
  counter: number;
  seq: number;
  uptime: number;
}

/** Sends one request; resolves with the reply line, or '' when the guest is not listening yet. */
export function guestRequest(host: string, port: number, request: string): Promise<string> {
  return new Promise((resolve) => {
    const sock = createConnection({ host, port });
    let data = '';
    const timer = setTimeout(() => sock.destroy(), 15_000);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(`${request}\n`));
    sock.on('data', (d: string) => (data += d));
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(timer);
      resolve(data.trim());
    });
  });
}

export function parseStat(line: string): GuestStat | null {
  const m = /^counter=(\d+) seq=(\d+) uptime=(\d+)$/.exec(line);
  return m ? { counter: Number(m[1]), seq: Number(m[2]), uptime: Number(m[3]) } : null;
}

/** Asks `stat` until the guest answers (it boots in a few seconds under TCG). */
export async function waitForStat(host: string, port: number, attempts = 120): Promise<GuestStat> {
  for (let i = 0; i < attempts; i++) {
    const s = parseStat(await guestRequest(host, port, 'stat'));
    if (s) return s;
    await new Promise((r) => setTimeout(r, 1000));
  }
  throw new Error(`guest at ${host}:${port} never answered stat`);
}

export async function stat(host: string, port: number): Promise<GuestStat> {
  const line = await guestRequest(host, port, 'stat');
  const s = parseStat(line);
  if (!s) throw new Error(`bad stat reply from ${host}:${port}: ${JSON.stringify(line)}`);
  return s;
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
