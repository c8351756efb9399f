/**
 * The internal snapshot table, read for `info` only (docs/qcow2-format.md "Internal
 * snapshots"): what qemu-img info lists under "snapshots". Reading never uses it (cownbd
 * serves the active layer), so a damaged table is reported, not fatal to reads.
 *
 * Each entry, 8-byte aligned, all big-endian: l1_table_offset u64, l1_size u32,
 * id_str_size u16, name_size u16, date_sec u32, date_nsec u32, vm_clock_nsec u64,
 * vm_state_size u32, extra_data_size u32, extra data (version 3: vm_state_size_large u64,
 * disk_size u64, icount u64 where -1 means none), then the id and name strings.
 */
import type { FileHandle } from 'node:fs/promises';
import { readFully } from '../../block/file-io.js';

export interface Qcow2Snapshot {
  readonly id: string;
  readonly name: string;
  readonly vmStateSize: number;
  readonly dateSec: number;
  readonly dateNsec: number;
  readonly vmClockNsec: number;
  /** Instructions counted at the snapshot (record/replay); null when not recorded. */
  readonly icount: number | null;
}

/** QEMU's own limit on the number of snapshots (QCOW_MAX_SNAPSHOTS). */
const MAX_SNAPSHOTS = 65536;
const FIXED = 40;
/** extra_data_size QEMU accepts at most (QCOW_MAX_SNAPSHOT_EXTRA_DATA). */
const MAX_EXTRA = 1024;

export async function readSnapshots(fh: FileHandle, fileLength: number, offset: number, count: number): Promise<Qcow2Snapshot[]> {
  if (count > MAX_SNAPSHOTS) throw new Error(`nb_snapshots ${count} is more than QEMU allows (${MAX_SNAPSHOTS})`);
  const out: Qcow2Snapshot[] = [];
  let at = offset;
  for (let i = 0; i < count; i++) {
    if (at + FIXED > fileLength) throw new Error(`snapshot ${i} at ${at} lies past the end of the file (${fileLength} bytes)`);
    const head = Buffer.alloc(FIXED);
    await readFully(fh, at, head, FIXED);
    const idSize = head.readUInt16BE(12);
    const nameSize = head.readUInt16BE(14);
    const extraSize = head.readUInt32BE(36);
    if (extraSize > MAX_EXTRA) throw new Error(`snapshot ${i}: extra_data_size ${extraSize} is more than QEMU allows (${MAX_EXTRA})`);
    const rest = Buffer.alloc(extraSize + idSize + nameSize);
    if (at + FIXED + rest.length > fileLength) throw new Error(`snapshot ${i} at ${at} lies past the end of the file (${fileLength} bytes)`);
    await readFully(fh, at + FIXED, rest, rest.length);
    const extra = rest.subarray(0, extraSize);
    const icount = extraSize >= 24 && extra.readBigInt64BE(16) !== -1n ? Number(extra.readBigUInt64BE(16)) : null;
    out.push({
      id: rest.toString('utf8', extraSize, extraSize + idSize),
      name: rest.toString('utf8', extraSize + idSize, extraSize + idSize + nameSize),
      vmStateSize: extraSize >= 8 ? Number(extra.readBigUInt64BE(0)) : head.readUInt32BE(32),
      dateSec: head.readUInt32BE(16),
      dateNsec: head.readUInt32BE(20),
      vmClockNsec: Number(head.readBigUInt64BE(24)),
      icount,
    });
    at += Math.ceil((FIXED + rest.length) / 8) * 8;
  }
  return out;
}
