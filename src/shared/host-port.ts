// `host:port` strings as the config writes them: `127.0.0.1:9464`, `node1.example:9464`,
// `[::1]:9464`. Shared by the config schema (validation) and the servers that listen on them.
import { isIP } from 'node:net';

export interface HostPort {
  /** Without IPv6 brackets, as `net.Server.listen` takes it. */
  host: string;
  port: number;
}

/** Splits `host:port` (`[v6]:port` for IPv6); undefined when it is not one. Port 0 is allowed. */
export function splitHostPort(s: string): HostPort | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})$/.exec(s);
  if (!m) return undefined;
  const host = m[1] ?? m[2]!;
  if (m[1] !== undefined && isIP(host) !== 6) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host, port };
}

/** The inverse of splitHostPort: brackets an IPv6 host. */
export function joinHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Whether `s` is an IP literal and port, as a Rust `SocketAddr` (the Temporal SDK's exporter) parses it. */
export function isSocketAddress(s: string): boolean {
  const hp = splitHostPort(s);
  return hp !== undefined && isIP(hp.host) !== 0;
}
