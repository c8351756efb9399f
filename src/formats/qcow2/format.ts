/**
 * The qcow2 format record (QEMU's copy-on-write format, versions 2 and 3;
 * docs/qcow2-format.md): READ-ONLY — served with -r / ,ro, or as the base (backing) of
 * cow and add-cow overlays and of other qcow2 images. No create, check, commit or rebase.
 *
 * Selected by name only (-f qcow2, --base-format qcow2, format=qcow2, a recorded backing
 * format): no probe here. Recognising the magic of images the operator names is the
 * foreign-image guard's job; isQcow2Magic (qcow2-header.ts) is what it can call.
 */
import type { FormatRecord } from '../format-record.js';
import { qcow2HostOffsets } from './qcow2-open.js';
import { inspectQcow2 } from './qcow2-inspect.js';
import { openQcow2 } from './qcow2-open.js';

export const qcow2Format: FormatRecord = {
  name: 'qcow2',
  summary: 'QEMU qcow2 v2/v3 image (read-only: served with -r, or as a base/backing)',
  overlay: false,
  fileSuffix: '.qcow2',
  open: openQcow2,
  inspect: inspectQcow2,
  hostOffsets: (layer) => qcow2HostOffsets(layer.path ?? ''),
};
