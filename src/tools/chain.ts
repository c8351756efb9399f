/**
 * Opening an image chain for the tools, read-only by default, with the same options the
 * server takes (format, backing override/format, layout, ignore-mtime), plus the list of
 * files per allocation depth (depth 1 = the named file, 2 = its backing, ...).
 */
import type { BlockDevice, LayerInfo } from '../block/block-device.js';
import type { CheckedDevice } from '../block/checked-device.js';
import type { FileIo } from '../block/file-io.js';
import { openImage, type ImageFormat, type OpenImageOptions } from '../formats/open-image.js';

export interface ChainOptions {
  format?: ImageFormat;
  backingFile?: string;
  backingFormat?: ImageFormat;
  layout?: string;
  ignoreMtime?: boolean;
  /** I/O policy of the opened stacks (default: every fast path). */
  io?: FileIo;
  /** Access to s3:// images in the chain (created on first use). */
  objectStore?: OpenImageOptions['objectStore'];
}

export async function openChain(file: string, options: ChainOptions, readOnly = true): Promise<CheckedDevice> {
  const o: OpenImageOptions = {
    readOnly,
    format: options.format,
    backingFile: options.backingFile,
    backingFormat: options.backingFormat,
    layout: options.layout,
    ignoreMtime: options.ignoreMtime,
    io: options.io,
    objectStore: options.objectStore,
  };
  return openImage(file, o);
}

/** File holding the data of each depth: [depth 1, depth 2, ...] (add-cow: its image file). */
export function layerFiles(device: BlockDevice): string[] {
  const out: string[] = [];
  let info: LayerInfo | undefined = device.describe();
  while (info) {
    const detail = info.detail ?? {};
    const image = typeof detail.imagePath === 'string' ? detail.imagePath : typeof detail.imageFile === 'string' ? detail.imageFile : undefined;
    out.push(image ?? info.path ?? '');
    info = info.backing;
  }
  return out;
}
