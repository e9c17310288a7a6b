// A plain TCP forwarder: the lab's Temporal dev server listens on 127.0.0.1 (start-dev's internal
// services advertise loopback and break on any other --ip), and workers inside the network
// namespaces reach it through this, on the lab's control address.
// The Xen lab also forwards to a guest through an SSH channel (`target` as a function).
import { createServer, connect, type AddressInfo, type Server } from 'node:net';
import type { Duplex } from 'node:stream';

export async function forwardTcp(
  listen: { host: string; port: number },
  target: { host: string; port: number } | (() => Promise<Duplex>),
): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Duplex>();
  const server: Server = createServer(async (client) => {
    sockets.add(client);
    let upstream: Duplex | undefined;
    const drop = () => {
      client.destroy();
      upstream?.destroy();
      sockets.delete(client);
      if (upstream) sockets.delete(upstream);
    };
    // Listening before the (possibly slow) upstream opens: a client reset meanwhile must not be
    // an unhandled 'error'.
    client.on('error', drop).on('close', drop);
    try {
      upstream = typeof target === 'function' ? await target() : connect(target);
    } catch {
      drop();
      return;
    }
    if (client.destroyed) {
      upstream.destroy();
      return;
    }
    sockets.add(upstream);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
