/**
 * The TOP layer of an open chain, for commit, rebase and convert: which byte ranges it
 * holds itself and where its backing is. The layer's format record answers
 * (FormatRecord.layer); a format without one (raw) has no backing to commit or rebase.
 */
import type { BlockDevice } from '../block/block-device.js';
import type { OverlayLayer } from '../formats/format-record.js';
import { formatByName } from '../formats/registry.js';
import { ToolError } from './errors.js';

export type TopLayer = OverlayLayer;

export function topLayer(dev: BlockDevice): TopLayer {
  const info = dev.describe();
  const layer = formatByName(info.format).layer?.(dev);
  if (!layer) throw new ToolError(`${info.path ?? 'image'}: a ${info.format} image has no backing file (nothing to commit or rebase)`);
  return layer;
}
