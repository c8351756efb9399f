/**
 * Where the bitmap and the data area live, per header layout (docs/cow-format.md#geometry).
 *
 *   +--------+---------+---------------------+---------------------------------------+
 *   | header | padding | bitmap (bitmapLength)| padding | data area: sector s at      |
 *   |        |         | at bitmapOffset      |         | dataOffset + s*512           |
 *   +--------+---------+---------------------+---------------------------------------+
 *
 *   layout      bitmapOffset            bitmapLength                  dataOffset
 *   v1          280                     floor((size+ss-1)/(8*ss)) ⚠   roundup(bo+bl, ss)
 *   v2          4120                    floor((size+ss-1)/(8*ss)) ⚠   roundup(bo+bl, ss)
 *   v3          roundup(4128, align)    ceil(ceil(size/ss)/8)         roundup(bo+bl, align)
 *   v3-broken   roundup(4136, align)    ceil(ceil(size/ss)/8)         roundup(bo+bl, align)
 *   qemu-*      sizeof (1048/1056)      ceil(floor(size/512)/8)       roundup(bo+bl, 512)
 *
 * ⚠ docs/cow-format.md#c11: UML's v1/v2 formula can be one byte short; bits past bitmapLength*8 read as
 * unset (what UML and uml_moo show) and those sectors are not writable in that layout.
 * QEMU files hold no bit for a partial last sector, with the same consequence.
 */
import { alignUp } from '../../block/block-split.js';
import { COW_SECTOR_SIZE, type CowHeader } from './cow-header.js';

export interface CowGeometry {
  readonly bitmapOffset: number;
  readonly bitmapLength: number;
  readonly dataOffset: number;
  /** Virtual size: roundup(size, 512) (docs/cow-format.md#c9). */
  readonly virtualSize: number;
  /** Sectors of the virtual disk (= bits that have a meaning). */
  readonly sectors: number;
  /** Sectors that have a bit inside bitmapLength (may be < sectors: docs/cow-format.md#c11). */
  readonly representableSectors: number;
  /** Minimum plausible file length (UML layouts are created data_offset+size long). */
  readonly minFileLength: number;
}

export function cowGeometry(h: CowHeader): CowGeometry {
  const ss = h.sectorSize;
  let bitmapOffset: number;
  let bitmapLength: number;
  let dataOffset: number;
  switch (h.layout) {
    case 'v1':
    case 'v2':
      bitmapOffset = h.headerSize;
      bitmapLength = Math.floor((h.size + ss - 1) / (8 * ss));
      dataOffset = alignUp(bitmapOffset + bitmapLength, ss);
      break;
    case 'v3':
    case 'v3-broken':
      bitmapOffset = alignUp(h.headerSize, h.alignment);
      bitmapLength = Math.ceil(Math.ceil(h.size / ss) / 8);
      dataOffset = alignUp(bitmapOffset + bitmapLength, h.alignment);
      break;
    case 'qemu-i386':
    case 'qemu-x86_64':
      bitmapOffset = h.headerSize;
      bitmapLength = Math.ceil(Math.floor(h.size / COW_SECTOR_SIZE) / 8);
      dataOffset = alignUp(bitmapOffset + bitmapLength, COW_SECTOR_SIZE);
      break;
  }
  const sectors = Math.ceil(h.size / COW_SECTOR_SIZE);
  const qemu = h.layout === 'qemu-i386' || h.layout === 'qemu-x86_64';
  return Object.freeze({
    bitmapOffset,
    bitmapLength,
    dataOffset,
    virtualSize: sectors * COW_SECTOR_SIZE,
    sectors,
    representableSectors: Math.min(sectors, bitmapLength * 8, qemu ? Math.floor(h.size / COW_SECTOR_SIZE) : sectors),
    // QEMU never pre-extends the data area; UML layouts start with at least the data offset.
    minFileLength: qemu ? bitmapOffset + bitmapLength : dataOffset,
  });
}
