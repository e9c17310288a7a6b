// A plain TCP forwarder: the lab's Temporal dev server listens on 127.0.0.1 (start-dev's internal
// services advertise loopback and break on any other --ip), and workers inside the network
// namespaces reach it through this, on the lab's control address.
import { createServer, connect, type Server } from 'node:net';

export async function forwardTcp(listen: { host: string; port: number }, target: { host: string; port: number }): Promise<{ close(): Promise<void> }> {
  const sockets = new Set<import('node:net').Socket>();
  const server: Server = createServer((client) => {
    const upstream = connect(target);
    sockets.add(client).add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
