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
  ])('parses %s', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each(['', 'abc', '-1', '1X', '0.3'])('refuses %j naming the text', (text) => {
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
