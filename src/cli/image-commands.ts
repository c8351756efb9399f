/**
 * Image subcommands: create, add-cow finalize, info, check, map, commit, convert, rebase.
 * Registered on the commander program by cli/main.ts. Parsing and printing only; the
 * work lives in src/tools/*.ts (one module per subcommand).
 *
 * Exit codes follow qemu-img: 0 success, 1 error (the message names file/field/value);
 * check: 2 corruption, 3 leaks/cosmetic only; 130 after SIGINT (a safe state was kept).
 * --json prints exactly one JSON document on stdout (schemas: src/tools/json-schemas.ts).
 */
import { type Command, Option } from 'commander';
import type { FileIo } from '../block/file-io.js';
import { createAddCow, finalizeAddCow } from '../formats/add-cow/index.js';
import { createCow } from '../formats/cow/index.js';
import { IMAGE_FORMATS, openImage, type ImageFormat } from '../formats/open-image.js';
import { parseSize } from '../util/size.js';
import { formatCheckText, runCheck } from '../tools/check.js';
import { runCommit, type OutputSize, type ToolContext } from '../tools/commit.js';
import { journalPath } from '../tools/commit-journal.js';
import { runConvert } from '../tools/convert.js';
import { EXIT_INTERRUPTED, InterruptedError, ToolError } from '../tools/errors.js';
import { formatInfoText, runInfo } from '../tools/info.js';
import { Interrupt } from '../tools/interrupt.js';
import { formatMapText, runMap } from '../tools/map.js';
import { makeProgress } from '../tools/progress.js';
import { runRebase } from '../tools/rebase.js';
import { formatSize } from '../util/size.js';
import { addObjectStoreOptions, lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { formatObjectStoreInfoText, runObjectStoreInfo } from '../objectstore/info.js';
import { remoteBackingStat } from '../objectstore/open.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import { StoreClient } from '../objectstore/store-client.js';
import { silentLogger } from '../logging.js';

interface CreateFlags {
  format: 'cow' | 'add-cow';
  backing?: string;
  backingFormat?: ImageFormat;
  image?: string;
  clusterSize?: string;
  size?: string;
  force?: boolean;
}

interface CommonFlags {
  format?: ImageFormat;
  backingFormat?: ImageFormat;
  layout?: string;
  ignoreMtime?: boolean;
  json?: boolean;
  quiet?: boolean;
}

const formatOption = (): Option => new Option('-f, --format <format>', 'format of FILE (default: detected from its magic)').choices([...IMAGE_FORMATS]);
const backingFormatOption = (): Option =>
  new Option('-F, --backing-format <format>', 'format of the backing file (cow default raw; add-cow: as recorded)').choices([...IMAGE_FORMATS]);
const layoutOption = (): Option => new Option('--layout <layout>', 'cow: force a header layout (v1, v2, v3, v3-broken, qemu-i386, qemu-x86_64)');

function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Run a long operation with SIGINT handling and an optional progress bar. */
async function longRun<T>(flags: CommonFlags, state: () => string, fn: (ctx: ToolContext) => Promise<T>, print: (r: T) => void): Promise<void> {
  try {
    const r = await Interrupt.run(state, (interrupt) =>
      fn({ interrupt, makeProgress: (label, total) => makeProgress(label, total, Boolean(flags.quiet || flags.json)) }),
    );
    print(r);
  } catch (err) {
    if (err instanceof InterruptedError) {
      process.stderr.write(`cownbd: ${err.message}\n`);
      process.exitCode = EXIT_INTERRUPTED;
      return;
    }
    throw err;
  }
}

/** The pinned address, virtual size and manifest time of an s3:// backing, for `create`. */
async function pinRemoteBacking(address: string, flags: ObjectStoreFlags): Promise<{ pinned: string; size: number; mtime: number }> {
  const objectStore = lazyObjectStore(flags, silentLogger());
  try {
    const dev = await openImage(address, { readOnly: true, objectStore });
    const info = dev.describe();
    await dev.close();
    return { pinned: info.path ?? address, size: dev.size, mtime: Number(info.detail?.mtime ?? 0) };
  } finally {
    await objectStore.close();
  }
}

export function registerImageCommands(program: Command, io: FileIo): void {
  const createCmd = program
    .command('create')
    .description('create a copy-on-write overlay (cow: UML v3 like uml_mkcow; add-cow: metadata + image file)')
    .addOption(new Option('-f, --format <format>', 'overlay format').choices(['cow', 'add-cow']).makeOptionMandatory())
    .argument('<file>', 'overlay file to create')
    .option('-b, --backing <path>', 'backing (base) image; never modified')
    .addOption(new Option('-F, --backing-format <format>', 'format of the backing image (never probed)').choices([...IMAGE_FORMATS]))
    .option('--image <path>', 'add-cow: image file holding guest data (created if missing)')
    .option('--cluster-size <size>', 'add-cow: cluster size, 4K..2M (default 64K)')
    .option('--size <size>', 'add-cow: virtual size (default: image file size, else backing size); cow: must equal the backing size')
    .option('--force', 'overwrite an existing overlay');
  addObjectStoreOptions(createCmd);
  createCmd.action(async (file: string, flags: CreateFlags & ObjectStoreFlags) => {
      // An s3:// backing is recorded pinned to the version that exists now (docs/object-store.md).
      const remote = flags.backing !== undefined && isObjectStoreUri(flags.backing) ? await pinRemoteBacking(flags.backing, flags) : undefined;
      if (remote && flags.backingFormat && flags.backingFormat !== 'raw') throw new Error('an s3:// backing is a published image: drop --backing-format');
      if (flags.format === 'cow') {
        if (!flags.backing) throw new Error('create -f cow needs --backing (a cow overlay always has a backing file)');
        if (flags.image !== undefined || flags.clusterSize !== undefined) throw new Error('--image and --cluster-size apply to -f add-cow only');
        if (flags.backingFormat && flags.backingFormat !== 'raw') {
          // The cow header has no format field: record nothing, but the operator must repeat it when serving.
          process.stderr.write(`note: cow headers cannot record the backing format; pass --backing-format ${flags.backingFormat} when opening\n`);
        }
        if (flags.size !== undefined) {
          const { stat } = await import('node:fs/promises');
          const want = parseSize(flags.size);
          const have = remote ? remote.size : (await stat(flags.backing)).size;
          if (want !== have) throw new Error(`--size ${want}: a cow overlay is always the size of its backing file (${flags.backing} is ${have} bytes)`);
        }
        if (remote) await createCow(file, { backingFile: remote.pinned, remoteBackingStat: { size: remote.size, mtime: remote.mtime }, force: flags.force });
        else await createCow(file, { backingFile: flags.backing, force: flags.force });
      } else {
        if (!flags.image) throw new Error('create -f add-cow needs --image (the file that holds guest data)');
        await createAddCow(file, {
          imageFile: flags.image,
          backingFile: remote ? remote.pinned : flags.backing,
          ...(remote ? { backingVirtualSize: remote.size } : {}),
          backingFormat: flags.backingFormat,
          clusterSize: flags.clusterSize ? parseSize(flags.clusterSize, 'cluster size') : undefined,
          size: flags.size ? parseSize(flags.size) : undefined,
          force: flags.force,
        });
      }
    });

  const addCow = program.command('add-cow').description('add-cow specific operations');
  addCow
    .command('finalize')
    .description('set ALL_ALLOCATED once every cluster is in the image file, so the image can be used alone')
    .argument('<file>', '.add-cow metadata file')
    .action(async (file: string) => {
      await finalizeAddCow(file);
    });

  const info = program
    .command('info')
    .description('show format, layout, sizes, offsets and backing-file checks of an image (never writes)')
    .argument('<file>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--backing-chain', 'also describe every backing layer (JSON: an array, top first)')
    .option('--json', 'machine-readable output');
  addObjectStoreOptions(info)
    .action(async (file: string, flags: CommonFlags & ObjectStoreFlags & { backingChain?: boolean }) => {
      if (isObjectStoreUri(file)) {
        const client = new StoreClient(storeConfigFrom(flags));
        try {
          const i = await runObjectStoreInfo(file, client);
          if (flags.json) printJson(i);
          else process.stdout.write(formatObjectStoreInfoText(i));
        } finally {
          client.close();
        }
        return;
      }
      const objectStore = lazyObjectStore(flags, silentLogger());
      const remoteStat = remoteBackingStat(objectStore);
      const infos = await runInfo(file, { format: flags.format, backingFormat: flags.backingFormat, layout: flags.layout, chain: flags.backingChain, io, remoteStat }).finally(() =>
        objectStore.close(),
      );
      if (flags.json) printJson(flags.backingChain ? infos : infos[0]);
      else process.stdout.write(infos.map(formatInfoText).join('\n'));
    });

  program
    .command('check')
    .description('check overlay metadata; exit 0 clean, 2 corruption, 3 leaks/cosmetic only, 1 could not check, 63 no metadata (raw)')
    .argument('<file>', 'overlay file')
    .addOption(formatOption())
    .addOption(layoutOption())
    .option('--repair', 'fix what is provably safe (tail bits, padding garbage, file length); never data or backing files')
    .option('--json', 'machine-readable output')
    .action(async (file: string, flags: CommonFlags & { repair?: boolean }) => {
      const r = await runCheck(file, { format: flags.format, layout: flags.layout, repair: flags.repair });
      if (flags.json) printJson(r);
      else if (r.error) process.stderr.write(formatCheckText(r));
      else process.stdout.write(formatCheckText(r));
      process.exitCode = r.exitCode;
    });

  const map = program
    .command('map')
    .description('allocation map of a chain: offset, length, depth (layer), zero/data (same as NBD qemu:allocation-depth + base:allocation)')
    .argument('<file>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--ignore-mtime', 'cow: open even if the backing mtime does not match')
    .option('--json', 'machine-readable output');
  addObjectStoreOptions(map)
    .action(async (file: string, flags: CommonFlags & ObjectStoreFlags) => {
      const objectStore = lazyObjectStore(flags, silentLogger());
      const m = await runMap(file, { ...flags, io, objectStore }).finally(() => objectStore.close());
      if (flags.json) printJson(m);
      else process.stdout.write(formatMapText(m));
    });

  program
    .command('commit')
    .description('merge an overlay with its backing file: in place (--to, like uml_moo -d) or into a new file (-o, like uml_moo)')
    .argument('<file>', 'overlay file')
    .option('--to <backing>', 'merge IN PLACE into this backing file (it is written; other overlays on it become invalid)')
    .option('-o, --output <file>', 'write the merged image to a new sparse raw file')
    .addOption(
      new Option('--output-size <mode>', 'cow: length of the result: backing (exactly the backing size), virtual (rounded up to 512), uml-moo (rounded down like uml_moo)').choices([
        'backing',
        'virtual',
        'uml-moo',
      ]),
    )
    .option('--uml-moo', 'same as --output-size uml-moo (byte-identical to uml_moo, which drops a partial last sector)')
    .option('--no-update-header', 'in place, cow: leave the header mtime stale, as uml_moo -d does')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--ignore-mtime', 'cow: accept a backing file whose mtime does not match (recovery)')
    .option('--force', '-o: overwrite an existing output file')
    .option('-q, --quiet', 'no progress bar')
    .option('--json', 'print a JSON result (implies --quiet)')
    .action(async (file: string, flags: CommonFlags & { to?: string; output?: string; outputSize?: OutputSize; umlMoo?: boolean; updateHeader?: boolean; force?: boolean }) => {
      const outputSize: OutputSize | undefined = flags.umlMoo ? 'uml-moo' : flags.outputSize;
      const state = (): string =>
        flags.to
          ? `the view through ${file} is unchanged; ${flags.to} is partially updated and ${journalPath(file)} records it: run the same commit again to finish`
          : `${flags.output} was not created`;
      await longRun(
        flags,
        state,
        (ctx) => runCommit(file, { ...flags, outputSize, io }, ctx),
        (r) => {
          if (flags.json) printJson(r);
          else if (!flags.quiet) {
            process.stdout.write(
              `${r.resumed ? 'Resumed and completed' : 'Committed'} ${file} ${r.mode === 'in-place' ? 'into' : 'to'} ${r.target}: ${formatSize(r.bytesWritten)} written${r.headerUpdated ? ' (overlay header mtime updated)' : ''}\n`,
            );
          }
        },
      );
    });

  const convert = program
    .command('convert')
    .description('copy the full view of an image chain into a new raw image, cow overlay or add-cow overlay')
    .argument('<src>', 'source image (any chain)')
    .addOption(new Option('-O, --output-format <format>', 'format of the new image').choices([...IMAGE_FORMATS]).makeOptionMandatory())
    .argument('<dst>', 'new image')
    .addOption(formatOption())
    .addOption(new Option('--source-backing-format <format>', 'format of the source backing file').choices([...IMAGE_FORMATS]))
    .addOption(layoutOption())
    .option('--ignore-mtime', 'source cow: accept a backing file whose mtime does not match')
    .option('-b, --backing <path>', 'backing file of the new overlay (-O cow: required; -O add-cow: optional)')
    .addOption(new Option('-B, --backing-format <format>', 'format of the new overlay\'s backing file').choices([...IMAGE_FORMATS]))
    .option('--image <path>', '-O add-cow: image file (default: DST without .add-cow, plus .img)')
    .option('--cluster-size <size>', '-O add-cow: cluster size (default 64K)')
    .option('--force', 'overwrite existing output files')
    .option('-q, --quiet', 'no progress bar')
    .option('--json', 'print a JSON result (implies --quiet)');
  // Flattening a chain over an s3:// base into local files (for UML's tools) reads the store.
  addObjectStoreOptions(convert).action(
      async (
        src: string,
        dst: string,
        flags: CommonFlags &
          ObjectStoreFlags & { outputFormat: ImageFormat; sourceBackingFormat?: ImageFormat; backing?: string; image?: string; clusterSize?: string; force?: boolean },
      ) => {
        const objectStore = lazyObjectStore(flags, silentLogger());
        await longRun(
          flags,
          () => `the partial output ${dst} was removed`,
          (ctx) =>
            runConvert(
              src,
              dst,
              {
                format: flags.format,
                backingFormat: flags.sourceBackingFormat,
                layout: flags.layout,
                ignoreMtime: flags.ignoreMtime,
                io,
                objectStore,
                outputFormat: flags.outputFormat,
                outBacking: flags.backing,
                outBackingFormat: flags.backingFormat,
                image: flags.image,
                clusterSize: flags.clusterSize ? parseSize(flags.clusterSize, 'cluster size') : undefined,
                force: flags.force,
              },
              ctx,
            ),
          (r) => {
            if (flags.json) printJson(r);
            else if (!flags.quiet) process.stdout.write(`Converted ${src} to ${r.outputFormat} ${dst}: ${formatSize(r.bytesWritten)} written\n`);
          },
        ).finally(() => objectStore.close());
      },
    );

  const rebase = program
    .command('rebase')
    .description('point an overlay at a different backing file (safe: copies sectors that differ; --unsafe: header only)')
    .argument('<file>', 'overlay file')
    .requiredOption('-b, --backing <path>', 'the new backing file')
    .addOption(backingFormatOption())
    .addOption(formatOption())
    .addOption(layoutOption())
    .option('--unsafe', 'only rewrite the header (the caller guarantees the new backing has the same content)')
    .option('--ignore-mtime', 'cow: accept an old backing file whose mtime does not match')
    .option('--force', 'cow: accept a new backing whose mtime does not fit 32 bits')
    .option('-q, --quiet', 'no progress bar')
    .option('--json', 'print a JSON result (implies --quiet)');
  // The old backing may be an s3:// base (moving an overlay onto a local copy of it).
  addObjectStoreOptions(rebase).action(async (file: string, flags: CommonFlags & ObjectStoreFlags & { backing: string; unsafe?: boolean; force?: boolean }) => {
      const objectStore = lazyObjectStore(flags, silentLogger());
      await longRun(
        flags,
        () => `${file} still names its old backing file; data copied so far is flushed and harmless`,
        (ctx) =>
          runRebase(
            file,
            { format: flags.format, layout: flags.layout, ignoreMtime: flags.ignoreMtime, io, objectStore, newBacking: flags.backing, newBackingFormat: flags.backingFormat, unsafe: flags.unsafe, force: flags.force },
            ctx,
          ),
        (r) => {
          if (flags.json) printJson(r);
          else if (!flags.quiet) process.stdout.write(`Rebased ${file} onto ${r.storedBacking}${r.unsafe ? ' (unsafe: header only)' : `: ${formatSize(r.bytesCopied)} copied into the overlay`}\n`);
        },
      ).finally(() => objectStore.close());
    });
}

export { ToolError };
