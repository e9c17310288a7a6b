// Same public API as ./index.js, under the module name some callers use.
export * from './index.js';
