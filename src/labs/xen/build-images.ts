// `node --import tsx src/labs/xen/build-images.ts`: builds the Xen lab's images into .cache/xen
// ahead of the tests (the first build runs debootstrap: a few minutes).
import { ensureXenImages } from './xen-images.js';

const images = await ensureXenImages(undefined, (l) => console.log(l));
console.log(JSON.stringify(images, null, 2));
