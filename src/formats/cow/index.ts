// Placeholder until the cow driver lands: the public surface of the cow format.
import type { BlockDevice } from '../../block/block-device.js';
import type { OpenBacking, OpenImageOptions } from '../open-image.js';

export interface CreateCowOptions {
  backingFile: string;
  force?: boolean;
}

export async function openCow(path: string, _options: OpenImageOptions, _openBacking: OpenBacking): Promise<BlockDevice> {
  throw new Error(`${path}: cow format not implemented yet`);
}

export async function createCow(path: string, _options: CreateCowOptions): Promise<void> {
  throw new Error(`${path}: cow format not implemented yet`);
}
