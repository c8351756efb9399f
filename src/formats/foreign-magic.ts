/**
 * Foreign image formats: the magics of disk-image formats cownbd does not write, so that
 * an image the OPERATOR named is never served (or written) as raw by accident. Serving a
 * qcow2 container as a raw disk exports its header as sector 0, and the first guest write
 * destroys it (issue 20). The table below is the only place that knows these magics;
 * foreign-probe.ts reads a file's first and last bytes, and the registry asks
 * detectForeign() about them. No I/O here.
 *
 * Each entry says what cownbd does with the format (`support`):
 *   refused     the operator must say `-f raw` (or convert the image) to use its bytes
 *   read-only   the format record of the same name serves it: registry.ts selects it for
 *               a named image, and as the format of a --base or create --backing given
 *               without one. Once a record (e.g. src/formats/qcow2/) is in the registry's
 *               FORMATS, turning its entry here from 'refused' to 'read-only' is the one
 *               change that makes those paths use it.
 *
 * Where the magics are (checked against what `qemu-img create -f NAME` writes, in
 * test/cli/foreign-images.test.ts; facts in docs/image-tool.md#foreign-images):
 *   qcow, qcow2   'QFI\xfb' at 0, big-endian version at 4 (1: qcow; 2, 3 or anything else: qcow2)
 *   qed           'QED\0' at 0
 *   vmdk          'KDMV' (sparse), 'COWD' (ESX sparse) or the text '# Disk DescriptorFile' at 0
 *   vhdx          'vhdxfile' at 0
 *   vpc (VHD)     'conectix' at 0 (dynamic: a footer copy), or in the LAST 512 bytes
 *                 (fixed VHD: raw data followed by the footer)
 *   vdi           signature 0xbeda107f little-endian at 0x40
 *   parallels     'WithoutFreeSpace' or 'WithouFreSpacExt' at 0
 *   luks          'LUKS\xba\xbe' at 0
 *   dmg           'koly' in the last 512 bytes (the UDIF trailer)
 * A partition table (MBR 0x55AA at 510, GPT 'EFI PART' at 512) is NOT foreign: it is what
 * a raw disk starts with.
 *
 * The virtual size, where a header states it in these bytes, is what `info` reports.
 */

/** Bytes of the start of a file detectForeign() needs (every head magic fits in them). */
export const FOREIGN_HEAD_BYTES = 512;
/** Bytes of the end of a file detectForeign() looks at (the VHD footer, the DMG trailer). */
export const FOREIGN_TAIL_BYTES = 512;

export type ForeignSupport = 'refused' | 'read-only';

export interface ForeignFormat {
  /** qemu-img's name of the format (what `qemu-img convert -f NAME` takes). */
  readonly name: string;
  /** For people: what the format is. */
  readonly title: string;
  readonly support: ForeignSupport;
  /**
   * A format cownbd reads when it is named (src/formats/<name>/): probing still refuses it,
   * because "served as what the magic says" would let a guest that writes this magic into
   * a raw disk change how the disk is read; the refusal says how to name it.
   */
  readonly readableWhenNamed?: boolean;
  /** The magic is in these bytes (head: the file's first bytes; tail: its last, if it has them). */
  matches(head: Buffer, tail: Buffer | undefined): boolean;
  /** The disk size the header states, when these bytes and the file size give it. */
  virtualSize?(head: Buffer, tail: Buffer | undefined, fileSize: number): number | undefined;
}

const at = (buf: Buffer | undefined, offset: number, magic: Buffer): boolean =>
  buf !== undefined && buf.length >= offset + magic.length && buf.subarray(offset, offset + magic.length).equals(magic);
const ascii = (s: string): Buffer => Buffer.from(s, 'latin1');
const u64be = (buf: Buffer, offset: number): number | undefined => (buf.length >= offset + 8 ? Number(buf.readBigUInt64BE(offset)) : undefined);
const u64le = (buf: Buffer, offset: number): number | undefined => (buf.length >= offset + 8 ? Number(buf.readBigUInt64LE(offset)) : undefined);
const sectors = (n: number | undefined): number | undefined => (n === undefined ? undefined : n * 512);

const QFI = ascii('QFI\xfb');
const qcowVersion = (head: Buffer): number | undefined => (at(head, 0, QFI) && head.length >= 8 ? head.readUInt32BE(4) : undefined);
const CONECTIX = ascii('conectix');

export const FOREIGN_FORMATS: readonly ForeignFormat[] = [
  {
    name: 'qcow2',
    title: 'qcow2 (QEMU copy-on-write v2/v3)',
    support: 'refused',
    readableWhenNamed: true,
    // Any version but 1, unknown ones included: the magic alone says this is no raw disk.
    matches: (head) => at(head, 0, QFI) && qcowVersion(head) !== 1,
    virtualSize: (head) => u64be(head, 24),
  },
  {
    name: 'qcow',
    title: 'qcow (QEMU copy-on-write v1)',
    support: 'refused',
    matches: (head) => qcowVersion(head) === 1,
    virtualSize: (head) => u64be(head, 24),
  },
  {
    name: 'qed',
    title: 'QED (QEMU enhanced disk)',
    support: 'refused',
    matches: (head) => at(head, 0, ascii('QED\0')),
    virtualSize: (head) => u64le(head, 48),
  },
  {
    name: 'vmdk',
    title: 'VMDK (VMware)',
    support: 'refused',
    matches: (head) => at(head, 0, ascii('KDMV')) || at(head, 0, ascii('COWD')) || at(head, 0, ascii('# Disk DescriptorFile')),
    // Sparse extent header: capacity in sectors at 12 (the text descriptor states no size here).
    virtualSize: (head) => (at(head, 0, ascii('KDMV')) ? sectors(u64le(head, 12)) : undefined),
  },
  {
    name: 'vhdx',
    title: 'VHDX (Hyper-V)',
    support: 'refused',
    matches: (head) => at(head, 0, ascii('vhdxfile')),
  },
  {
    name: 'vpc',
    title: 'VHD (Virtual PC / vpc)',
    support: 'refused',
    matches: (head, tail) => at(head, 0, CONECTIX) || at(tail, 0, CONECTIX),
    // The footer's "current size", big-endian at 48 (dynamic: its copy at 0; fixed: at the end).
    virtualSize: (head, tail) => (at(head, 0, CONECTIX) ? u64be(head, 48) : tail && u64be(tail, 48)),
  },
  {
    name: 'vdi',
    title: 'VDI (VirtualBox)',
    support: 'refused',
    matches: (head) => head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f,
    virtualSize: (head) => u64le(head, 0x170),
  },
  {
    name: 'parallels',
    title: 'Parallels',
    support: 'refused',
    matches: (head) => at(head, 0, ascii('WithoutFreeSpace')) || at(head, 0, ascii('WithouFreSpacExt')),
    virtualSize: (head) => sectors(u64le(head, 36)),
  },
  {
    name: 'luks',
    title: 'LUKS (encrypted)',
    support: 'refused',
    matches: (head) => at(head, 0, ascii('LUKS\xba\xbe')),
    // LUKS1: the payload starts at a sector offset (big-endian at 104) and runs to the end.
    virtualSize: (head, _tail, fileSize) => (head.length >= 108 && head.readUInt16BE(6) === 1 ? fileSize - head.readUInt32BE(104) * 512 : undefined),
  },
  {
    name: 'dmg',
    title: 'DMG (Apple disk image)',
    support: 'refused',
    matches: (_head, tail) => at(tail, 0, ascii('koly')),
  },
];

/**
 * The foreign format whose magic `head` (the file's first bytes) or `tail` (its last
 * FOREIGN_TAIL_BYTES, when the file is longer than both) carries, or undefined: raw.
 */
export function detectForeign(head: Buffer, tail?: Buffer, formats: readonly ForeignFormat[] = FOREIGN_FORMATS): ForeignFormat | undefined {
  return formats.find((f) => f.matches(head, tail));
}

/**
 * What to tell the operator: one line naming the path, the format, and what to do. `rawOption`
 * is how the command in use says "these bytes are raw" (`-f raw`, `format=raw`, ...).
 */
export function foreignMessage(path: string, format: ForeignFormat, rawOption: string): string {
  return (
    `'${path}' is a ${format.title} image, a format cownbd does not serve: served as a raw disk its metadata would be disk data, and the first write would destroy the image. ` +
    (format.readableWhenNamed
      ? `cownbd reads it read-only when named: -r -f ${format.name} (an export: format=${format.name},ro; a base or backing: --base-format/--backing-format ${format.name}). Or give ${rawOption} if the file really is a raw disk`
      : `Convert it (qemu-img convert -f ${format.name} -O raw '${path}' IMAGE.raw), or give ${rawOption} if the file really is a raw disk`)
  );
}
