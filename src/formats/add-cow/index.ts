// Placeholder until the add-cow driver lands: the public surface of the add-cow format.
import type { BlockDevice } from '../../block/block-device.js';
import type { ImageFormat, OpenBacking, OpenImageOptions } from '../open-image.js';

export interface CreateAddCowOptions {
  imageFile: string;
  backingFile?: string;
  backingFormat?: ImageFormat;
  imageFormat?: 'raw';
  clusterSize?: number;
  /** Virtual size; default: existing image file's size, else the backing file's size. */
  size?: number;
  force?: boolean;
}

export async function openAddCow(path: string, _options: OpenImageOptions, _openBacking: OpenBacking): Promise<BlockDevice> {
  throw new Error(`${path}: add-cow format not implemented yet`);
}

export async function createAddCow(path: string, _options: CreateAddCowOptions): Promise<void> {
  throw new Error(`${path}: add-cow format not implemented yet`);
}

export async function finalizeAddCow(path: string): Promise<void> {
  throw new Error(`${path}: add-cow format not implemented yet`);
}
