import { describe, expect, it } from 'vitest';
import { formatSize, parseSize } from '../../src/util/size.js';

describe('parseSize', () => {
  it.each([
    ['65536', 65536],
    ['64K', 65536],
    ['64k', 65536],
    ['1M', 1048576],
    ['1MiB', 1048576],
    ['1.5G', 1.5 * 2 ** 30],
    ['2T', 2 * 2 ** 40],
    ['10GiB', 10 * 2 ** 30],
    ['512b', 512],
    ['512B', 512],
  ])('parses %s', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['10GB', '64kb', '1TB'])('refuses the ambiguous decimal-looking %j, as qemu-img does', (text) => {
    expect(() => parseSize(text, 'size')).toThrow(/ambiguous.*iB/);
  });

  it.each(['', 'abc', '-1', '1X', '0.3', '1ib', '1Mb b'])('refuses %j naming the text', (text) => {
    expect(() => parseSize(text, 'cluster size')).toThrow(/cluster size/);
  });
});

describe('formatSize', () => {
  it('formats binary units', () => {
    expect(formatSize(512)).toBe('512 bytes');
    expect(formatSize(1048576)).toBe('1 MiB');
    expect(formatSize(1536)).toBe('1.5 KiB');
  });
});
