/**
 * The work of the short image subcommands (create, add-cow finalize, info, check, map),
 * registered in image-commands.ts and imported when one of them runs. Printing only; the
 * work lives in src/tools/*.ts (one module per subcommand) and in the format records.
 */
import type { FileIo } from '../block/file-io.js';
import { finalizeAddCow } from '../formats/add-cow/index.js';
import { createImage } from '../formats/open-image.js';
import { formatCheckText, runCheck } from '../tools/check.js';
import { formatInfoText, runInfo } from '../tools/info.js';
import { formatMapText, runMap } from '../tools/map.js';
import { parseSize } from '../util/size.js';
import { lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { StoreClient } from '../objectstore/store-client.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { printJson, type CommonFlags } from './image-options.js';
import { wantsJson } from './qemu-img-habits.js';

export interface CreateFlags extends ObjectStoreFlags {
  format: string;
  backing?: string;
  backingFormat?: string;
  image?: string;
  clusterSize?: string;
  size?: string;
  force?: boolean;
}

export type InfoFlags = CommonFlags & ObjectStoreFlags & { backingChain?: boolean };
export type CheckFlags = CommonFlags & ObjectStoreFlags & { repair?: boolean; repairMode?: 'leaks' | 'all' };
export type MapFlags = CommonFlags & ObjectStoreFlags;

export async function createAction(file: string, sizeArg: string | undefined, flags: CreateFlags, io: FileIo): Promise<void> {
  if (sizeArg !== undefined && flags.size !== undefined && parseSize(flags.size) !== parseSize(sizeArg)) throw new Error(`SIZE ${sizeArg} and --size ${flags.size} disagree`);
  const size = sizeArg ?? flags.size;
  const objectStore = lazyObjectStore(flags);
  try {
    const made = await createImage(flags.format, file, {
      backing: flags.backing,
      backingFormat: flags.backingFormat,
      image: flags.image,
      clusterSize: flags.clusterSize ? parseSize(flags.clusterSize, 'cluster size') : undefined,
      size: size ? parseSize(size) : undefined,
      force: flags.force,
      io,
      objectStore,
    });
    for (const note of made.notes) process.stderr.write(`${note}\n`);
  } finally {
    await objectStore.close();
  }
}

export async function finalizeAction(file: string): Promise<void> {
  await finalizeAddCow(file);
}

export async function infoAction(file: string, flags: InfoFlags, io: FileIo): Promise<void> {
  if (isObjectStoreUri(file)) return objectStoreInfo(file, flags);
  const objectStore = lazyObjectStore(flags);
  const infos = await runInfo(file, { format: flags.format, backingFormat: flags.backingFormat, layout: flags.layout, chain: flags.backingChain, io, objectStore }).finally(() =>
    objectStore.close(),
  );
  if (wantsJson(flags)) printJson(flags.backingChain ? infos.map((i) => i.json) : infos[0]!.json);
  else process.stdout.write(infos.map(formatInfoText).join('\n'));
}

/** `info s3://…`: what the store holds (manifests, chunks), asked directly. */
async function objectStoreInfo(file: string, flags: ObjectStoreFlags & { json?: boolean; output?: 'human' | 'json' }): Promise<void> {
  // The manifest code (zod) only for s3:// addresses; local images never load it.
  const { formatObjectStoreInfoText, runObjectStoreInfo } = await import('../objectstore/info.js');
  const client = new StoreClient(storeConfigFrom(flags));
  try {
    const i = await runObjectStoreInfo(file, client);
    if (wantsJson(flags)) printJson(i);
    else process.stdout.write(formatObjectStoreInfoText(i));
  } finally {
    client.close();
  }
}

export async function checkAction(file: string, flags: CheckFlags): Promise<void> {
  const objectStore = lazyObjectStore(flags);
  const r = await runCheck(file, { format: flags.format, backingFormat: flags.backingFormat, layout: flags.layout, repair: Boolean(flags.repair || flags.repairMode), objectStore }).finally(() =>
    objectStore.close(),
  );
  if (wantsJson(flags)) printJson(r);
  else if (r.error) process.stderr.write(formatCheckText(r));
  else process.stdout.write(formatCheckText(r));
  process.exitCode = r.exitCode;
}

export async function mapAction(file: string, flags: MapFlags, io: FileIo): Promise<void> {
  const objectStore = lazyObjectStore(flags);
  const m = await runMap(file, { ...flags, io, objectStore }).finally(() => objectStore.close());
  if (wantsJson(flags)) printJson(m);
  else process.stdout.write(formatMapText(m));
}
