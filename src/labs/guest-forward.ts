// Forwards LISTEN_HOST:LISTEN_PORT to TARGET_HOST:TARGET_PORT until killed: run inside a lab node's
// network namespace, it exposes a guest that only that node reaches (libvirt lab, bridge br0).
import { forwardTcp } from './tcp-forward.js';

const [listenHost, listenPort, targetHost, targetPort] = process.argv.slice(2);
if (!listenHost || !listenPort || !targetHost || !targetPort) {
  console.error('usage: guest-forward LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT');
  process.exit(2);
}
await forwardTcp({ host: listenHost, port: Number(listenPort) }, { host: targetHost, port: Number(targetPort) });
