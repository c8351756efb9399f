/**
 * Human size strings as qemu-img accepts them: "65536", "64K", "64k", "1M", "1.5G", "2T".
 * Suffixes are binary (K = 1024). The unambiguous IEC spellings ("64KiB", "10GiB") are
 * accepted too; "10GB" is refused, as qemu-img refuses it: a reader may mean 10^10 bytes,
 * and silently taking 10 GiB would size a disk differently from what was asked.
 * Throws with the offending text on anything else.
 */
const UNITS: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(text: string, what = 'size'): number {
  const decimal = /^\s*\d+(?:\.\d+)?\s*([kmgtp])b\s*$/i.exec(text);
  if (decimal) {
    const unit = decimal[1]!.toUpperCase();
    throw new Error(`invalid ${what} "${text}": "${unit}B" is ambiguous (decimal or binary); write ${unit} or ${unit}iB for 1024-based units, or the number of bytes`);
  }
  const match = /^\s*(\d+(?:\.\d+)?)\s*(?:([kmgtp])(?:ib)?|(b)?)\s*$/i.exec(text);
  if (!match) throw new Error(`invalid ${what} "${text}" (expected e.g. 65536, 64K, 1M, 10G)`);
  const value = Number(match[1]) * UNITS[(match[2] ?? '').toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new Error(`invalid ${what} "${text}": not a whole number of bytes`);
  return value;
}

/** 1048576 → "1 MiB"; exact for display. */
export function formatSize(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} bytes` : `${Number(value.toFixed(2))} ${units[unit]}`;
}
