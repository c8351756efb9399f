/**
 * Image subcommands: create, add-cow finalize, info, check, map here; the long-running
 * commit, convert and rebase in image-long-commands.ts. Registered on the commander
 * program by cli/main.ts. Parsing and printing only; the work lives in src/tools/*.ts
 * (one module per subcommand) and in the format records they dispatch to.
 *
 * Exit codes follow qemu-img: 0 success, 1 error (the message names file/field/value);
 * check: 2 corruption, 3 leaks/cosmetic only; 130 after SIGINT (a safe state was kept).
 * --json prints exactly one JSON document on stdout (schemas: src/tools/json-schemas.ts).
 */
import { type Command, Option } from 'commander';
import type { FileIo } from '../block/file-io.js';
import { finalizeAddCow } from '../formats/add-cow/index.js';
import { createImage } from '../formats/open-image.js';
import { creatableFormats, FORMAT_NAMES } from '../formats/registry.js';
import { formatCheckText, runCheck } from '../tools/check.js';
import { ToolError } from '../tools/errors.js';
import { formatInfoText, runInfo } from '../tools/info.js';
import { formatMapText, runMap } from '../tools/map.js';
import { parseSize } from '../util/size.js';
import { silentLogger } from '../logging.js';
import { addObjectStoreOptions, lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { formatObjectStoreInfoText, runObjectStoreInfo } from '../objectstore/info.js';
import { StoreClient } from '../objectstore/store-client.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { registerLongImageCommands } from './image-long-commands.js';
import { backingFormatOption, formatOption, layoutOption, printJson, type CommonFlags } from './image-options.js';
import { forceShareOption, outputOption, wantsJson } from './qemu-img-habits.js';

interface CreateFlags {
  format: string;
  backing?: string;
  backingFormat?: string;
  image?: string;
  clusterSize?: string;
  size?: string;
  force?: boolean;
}

export function registerImageCommands(program: Command, io: FileIo): void {
  registerCreate(program, io);
  registerFinalize(program);
  registerInfo(program, io);
  registerCheck(program);
  registerMap(program, io);
  registerLongImageCommands(program, io);
}

function registerCreate(program: Command, io: FileIo): void {
  const create = program
    .command('create')
    .description('create an image: a sparse raw file (FILE SIZE, as qemu-img create) or a copy-on-write overlay (cow: UML v3 like uml_mkcow; add-cow: metadata + image file)')
    .addOption(new Option('-f, --format <format>', 'image format').choices(creatableFormats()).default('raw'))
    .argument('<file>', 'image file to create')
    .argument('[size]', 'virtual size, e.g. 64M or 10G (same as --size)')
    .option('-b, --backing <path>', 'backing (base) image; never modified')
    .addOption(new Option('-F, --backing-format <format>', 'format of the backing image (never probed)').choices([...FORMAT_NAMES]))
    .option('--image <path>', 'add-cow: image file holding guest data (created if missing)')
    .option('--cluster-size <size>', 'add-cow: cluster size, 4K..2M (default 64K)')
    .option('--size <size>', 'add-cow: virtual size (default: image file size, else backing size); cow: must equal the backing size')
    .option('--force', 'overwrite an existing overlay');
  // An s3:// backing is recorded pinned to the version that exists now (docs/object-store.md).
  addObjectStoreOptions(create).action(async (file: string, sizeArg: string | undefined, flags: CreateFlags & ObjectStoreFlags) => {
    if (sizeArg !== undefined && flags.size !== undefined && parseSize(flags.size) !== parseSize(sizeArg)) throw new Error(`SIZE ${sizeArg} and --size ${flags.size} disagree`);
    const size = sizeArg ?? flags.size;
    const objectStore = lazyObjectStore(flags, silentLogger());
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
  });
}

function registerFinalize(program: Command): void {
  const addCow = program.command('add-cow').description('add-cow specific operations');
  addCow
    .command('finalize')
    .description('set ALL_ALLOCATED once every cluster is in the image file, so the image can be used alone')
    .argument('<file>', '.add-cow metadata file')
    .action(async (file: string) => {
      await finalizeAddCow(file);
    });
}

function registerInfo(program: Command, io: FileIo): void {
  const info = program
    .command('info')
    .description('show format, layout, sizes, offsets and backing-file checks of an image (never writes)')
    .argument('<file>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--backing-chain', 'also describe every backing layer (JSON: an array, top first)')
    .option('--json', 'machine-readable output')
    .addOption(outputOption())
    .addOption(forceShareOption());
  addObjectStoreOptions(info)
    .action(async (file: string, flags: CommonFlags & ObjectStoreFlags & { backingChain?: boolean }) => {
      if (isObjectStoreUri(file)) return objectStoreInfo(file, flags);
      const objectStore = lazyObjectStore(flags, silentLogger());
      const infos = await runInfo(file, { format: flags.format, backingFormat: flags.backingFormat, layout: flags.layout, chain: flags.backingChain, io, objectStore }).finally(() =>
        objectStore.close(),
      );
      if (wantsJson(flags)) printJson(flags.backingChain ? infos.map((i) => i.json) : infos[0]!.json);
      else process.stdout.write(infos.map(formatInfoText).join('\n'));
    });
}

function registerCheck(program: Command): void {
  program
    .command('check')
    .description('check overlay metadata; exit 0 clean, 2 corruption, 3 leaks/cosmetic only, 1 could not check, 63 no metadata (raw)')
    .argument('<file>', 'overlay file')
    .addOption(formatOption())
    .addOption(layoutOption())
    .option('--repair', 'fix what is provably safe (tail bits, padding garbage, file length); never data or backing files')
    .addOption(
      new Option('-r, --repair-mode <what>', 'qemu-img check -r: leaks or all; both repair exactly what --repair does (cownbd never repairs corruption)').choices(['leaks', 'all']),
    )
    .option('--json', 'machine-readable output')
    .addOption(outputOption())
    .addOption(forceShareOption())
    .action(async (file: string, flags: CommonFlags & { repair?: boolean; repairMode?: 'leaks' | 'all' }) => {
      const r = await runCheck(file, { format: flags.format, layout: flags.layout, repair: Boolean(flags.repair || flags.repairMode) });
      if (wantsJson(flags)) printJson(r);
      else if (r.error) process.stderr.write(formatCheckText(r));
      else process.stdout.write(formatCheckText(r));
      process.exitCode = r.exitCode;
    });
}

/** `info s3://…`: what the store holds (manifests, chunks), asked directly. */
async function objectStoreInfo(file: string, flags: ObjectStoreFlags & { json?: boolean; output?: 'human' | 'json' }): Promise<void> {
  const client = new StoreClient(storeConfigFrom(flags));
  try {
    const i = await runObjectStoreInfo(file, client);
    if (wantsJson(flags)) printJson(i);
    else process.stdout.write(formatObjectStoreInfoText(i));
  } finally {
    client.close();
  }
}

function registerMap(program: Command, io: FileIo): void {
  const map = program
    .command('map')
    .description('allocation map of a chain: offset, length, depth (layer), zero/data (same as NBD qemu:allocation-depth + base:allocation)')
    .argument('<file>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--ignore-mtime', 'cow: open even if the backing mtime does not match')
    .option('--json', 'machine-readable output')
    .addOption(outputOption())
    .addOption(forceShareOption());
  addObjectStoreOptions(map)
    .action(async (file: string, flags: CommonFlags & ObjectStoreFlags) => {
      const objectStore = lazyObjectStore(flags, silentLogger());
      const m = await runMap(file, { ...flags, io, objectStore }).finally(() => objectStore.close());
      if (wantsJson(flags)) printJson(m);
      else process.stdout.write(formatMapText(m));
    });
}

export { ToolError };
