/**
 * The work of the short image subcommands (create, add-cow finalize, info, check, map, compare),
 * registered in image-commands.ts and imported when one of them runs. Printing only; the
 * work lives in src/tools/*.ts (one module per subcommand) and in the format records.
 */
import type { FileIo } from '../block/file-io.js';
import { finalizeAddCow } from '../formats/add-cow/index.js';
import { createImage } from '../formats/open-image.js';
import { stat } from 'node:fs/promises';
import { formatCheckText, runCheck, type CheckJson } from '../tools/check.js';
import { formatInfoText, runInfo } from '../tools/info.js';
import { formatMapText, runMap } from '../tools/map.js';
import { parseSize } from '../util/size.js';
import { lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { StoreClient } from '../objectstore/store-client.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { printJson, type CommonFlags } from './image-options.js';
import { printQemuJson, wantsJson, wantsQemuJson } from './qemu-img-habits.js';

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
export type CompareFlags = ObjectStoreFlags & { format?: string; secondFormat?: string; strict?: boolean; quiet?: boolean; ignoreMtime?: boolean };

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
  if (wantsQemuJson(flags)) {
    const { qemuInfo, qemuInfoChain } = await import('../tools/qemu-json.js');
    printQemuJson(flags.backingChain ? qemuInfoChain(infos.map((i) => i.json)) : qemuInfo(infos[0]!.json));
  } else if (wantsJson(flags)) printJson(flags.backingChain ? infos.map((i) => i.json) : infos[0]!.json);
  else process.stdout.write(infos.map(formatInfoText).join('\n'));
}

/** `info s3://…`: what the store holds (manifests, chunks), asked directly. */
async function objectStoreInfo(file: string, flags: ObjectStoreFlags & { json?: boolean; output?: 'human' | 'json' }): Promise<void> {
  // The manifest code (zod) only for s3:// addresses; local images never load it.
  const { formatObjectStoreInfoText, runObjectStoreInfo } = await import('../objectstore/info.js');
  const client = new StoreClient(storeConfigFrom(flags));
  try {
    const i = await runObjectStoreInfo(file, client);
    // qemu-img has no s3 driver: its keys with the closest values (docs/image-tool.md).
    if (wantsQemuJson(flags)) {
      printQemuJson({ filename: i.filename, format: i.format, 'virtual-size': i.virtualSize, 'actual-size': i.storedBytes, 'cluster-size': i.chunkSize, 'dirty-flag': false });
    } else if (wantsJson(flags)) printJson(i);
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
  if (wantsQemuJson(flags)) return qemuCheckAction(r, flags);
  if (wantsJson(flags)) printJson(r);
  else if (r.error) process.stderr.write(formatCheckText(r));
  else process.stdout.write(formatCheckText(r));
  process.exitCode = r.exitCode;
}

/**
 * check --output=json: qemu-img prints its document only when the check ran (an image it
 * cannot open or check is a message on stderr, exit 1; a format without checks exit 63).
 */
async function qemuCheckAction(r: CheckJson, flags: CheckFlags): Promise<void> {
  process.exitCode = r.exitCode;
  if (r.error !== null) {
    process.stderr.write(`${r.error}\n`);
    return;
  }
  const { clusterCounts, qemuCheck } = await import('../tools/qemu-json.js');
  // The allocation counts come from info's inspection; a file too broken for it has none.
  const info = await runInfo(r.filename, { format: r.format, layout: flags.layout, backingFormat: flags.backingFormat }).then(
    (infos) => infos[0]!.json,
    () => undefined,
  );
  const length = await stat(r.filename).then((st) => st.size, () => undefined);
  printQemuJson(qemuCheck(r, length, info && clusterCounts(info)));
}

export async function mapAction(file: string, flags: MapFlags, io: FileIo): Promise<void> {
  const objectStore = lazyObjectStore(flags);
  if (wantsQemuJson(flags)) {
    const { formatQemuMapJson, runQemuMap } = await import('../tools/qemu-map.js');
    const entries = await runQemuMap(file, { ...flags, io, objectStore }).finally(() => objectStore.close());
    process.stdout.write(formatQemuMapJson(entries));
    return;
  }
  const m = await runMap(file, { ...flags, io, objectStore }).finally(() => objectStore.close());
  if (wantsJson(flags)) printJson(m);
  else process.stdout.write(formatMapText(m));
}

/** compare: qemu-img's exit codes, so an error is exit 2 (not the tool's usual 1). */
export async function compareAction(first: string, second: string, flags: CompareFlags, io: FileIo): Promise<void> {
  const { runCompare } = await import('../tools/compare.js');
  const objectStore = lazyObjectStore(flags);
  const common = { io, objectStore, ignoreMtime: flags.ignoreMtime };
  try {
    const r = await runCompare(first, second, { first: { ...common, format: flags.format }, second: { ...common, format: flags.secondFormat }, strict: flags.strict });
    if (!flags.quiet) process.stdout.write(r.lines.map((l) => `${l}\n`).join(''));
    process.exitCode = r.exitCode;
  } catch (err) {
    process.stderr.write(`cownbd: compare: ${(err as Error).message.replace(/\s*\n\s*/g, ' ')}\n`);
    process.exitCode = 2;
  } finally {
    await objectStore.close();
  }
}
