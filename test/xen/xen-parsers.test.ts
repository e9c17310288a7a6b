// The parsers of xl's and era_invalidate's output, fed the exact text measured in the Xen lab.
import { describe, expect, it } from 'vitest';
import { parseEraInvalidate } from '../../src/drivers/xen/era-tracking.js';
import { parseXlList } from '../../src/drivers/xen/xen-driver.js';
import { FerryError } from '../../src/shared/errors.js';

const MiB = 1024 * 1024;

describe('era_invalidate output', () => {
  it('reads ranges (with its odd `end = ` spacing) and single blocks as 64 KiB extents', () => {
    const xml = '<blocks>\n  <range begin="16" end = "18"/>\n  <block block="20"/>\n</blocks>\n';
    expect(parseEraInvalidate(xml, 32 * MiB)).toEqual([
      { offset: 16 * 65536, length: 2 * 65536 },
      { offset: 20 * 65536, length: 65536 },
    ]);
  });

  it('clips the last block to the disk size and accepts an empty set', () => {
    expect(parseEraInvalidate('<blocks>\n  <block block="1"/>\n</blocks>', 65536 + 4096)).toEqual([{ offset: 65536, length: 4096 }]);
    expect(parseEraInvalidate('<blocks>\n</blocks>\n', MiB)).toEqual([]);
  });

  it('refuses output it does not understand instead of reporting no dirty blocks', () => {
    expect(() => parseEraInvalidate('<blocks>\n  <extent from="1" to="2"/>\n</blocks>', MiB)).toThrow(FerryError);
    expect(() => parseEraInvalidate('error: bad superblock', MiB)).toThrow(/unexpected era_invalidate output/);
  });
});

describe('xl list output', () => {
  it('parses names, ids and state flags', () => {
    const out = [
      'Name                                        ID   Mem VCPUs\tState\tTime(s)',
      'Domain-0                                     0   768     1     r-----     192.6',
      'g1--incoming                                 2   155     0     --p---       0.0',
      'g1                                           3   256     1     -b----       5.6',
      '',
    ].join('\n');
    expect(parseXlList(out)).toEqual([
      { name: 'Domain-0', id: 0, state: 'r-----' },
      { name: 'g1--incoming', id: 2, state: '--p---' },
      { name: 'g1', id: 3, state: '-b----' },
    ]);
  });
});
