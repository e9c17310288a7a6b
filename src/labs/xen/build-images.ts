// `node dist/labs/xen/build-images.js`: builds the labs' images into .cache/ ahead of the tests
// (the QEMU guest, and the Xen dom0 tree by debootstrap: a few minutes the first time), so a
// test's setup budget covers booting hosts, not downloading Debian.
import { ensureXenImages } from './xen-images.js';

const t0 = Date.now();
const stamp = () => `[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s]`;
const images = await ensureXenImages(undefined, (l) => console.log(`${stamp()} ${l}`));
console.log(`${stamp()} lab images ready: ${Object.values(images).join(' ')}`);
