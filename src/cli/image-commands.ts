/**
 * Image subcommands: create, add-cow finalize, info, check, map, compare here; the long-running
 * commit, convert and rebase in image-long-commands.ts. Registered on the commander
 * program by cli/main.ts. Registration only: each action imports image-actions.ts when it
 * runs, so `--help`, `--version` and the other commands never load the tools, the formats'
 * code or the object store.
 *
 * Exit codes follow qemu-img: 0 success, 1 error (the message names file/field/value);
 * check: 2 corruption, 3 leaks/cosmetic only; 130 after SIGINT (a safe state was kept).
 * --json prints exactly one JSON document on stdout (schemas: src/tools/json-schemas.ts).
 */
import { type Command, Option } from 'commander';
import { FileIo } from '../block/file-io.js';
import { creatableFormats, FORMAT_NAMES } from '../formats/registry.js';
import { addObjectStoreOptions } from '../objectstore/cli-options.js';
import type { CheckFlags, CompareFlags, CreateFlags, InfoFlags, MapFlags } from './image-actions.js';
import { registerLongImageCommands } from './image-long-commands.js';
import { backingFormatOption, formatOption, layoutOption } from './image-options.js';
import { forceShareOption, outputOption } from './qemu-img-habits.js';

const actions = () => import('./image-actions.js');

export function registerImageCommands(program: Command, serverIo: FileIo): void {
  // Tools have no event loop to keep responsive: lseek on the calling thread (IoPolicy.syncSeeks).
  const io = new FileIo({ ...serverIo.policy, syncSeeks: true }, serverIo.guard);
  registerCreate(program, io);
  registerFinalize(program);
  registerInfo(program, io);
  registerCheck(program);
  registerMap(program, io);
  registerCompare(program, io);
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
  addObjectStoreOptions(create).action(async (file: string, sizeArg: string | undefined, flags: CreateFlags) => (await actions()).createAction(file, sizeArg, flags, io));
}

function registerFinalize(program: Command): void {
  const addCow = program.command('add-cow').description('add-cow specific operations');
  addCow
    .command('finalize')
    .description('set ALL_ALLOCATED once every cluster is in the image file, so the image can be used alone')
    .argument('<file>', '.add-cow metadata file')
    .action(async (file: string) => (await actions()).finalizeAction(file));
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
    .option('--json', "machine-readable output (cownbd's document; --output=json: qemu-img's)")
    .addOption(outputOption(true))
    .addOption(forceShareOption());
  addObjectStoreOptions(info).action(async (file: string, flags: InfoFlags) => (await actions()).infoAction(file, flags, io));
}

function registerCheck(program: Command): void {
  const check = program
    .command('check')
    .description('check overlay metadata; exit 0 clean, 2 corruption, 3 leaks/cosmetic only, 1 could not check, 63 no metadata (raw)')
    .argument('<file>', 'overlay file')
    .addOption(formatOption())
    .addOption(backingFormatOption())
    .addOption(layoutOption())
    .option('--repair', 'fix what is provably safe (tail bits, padding garbage, file length); never data or backing files')
    .addOption(
      new Option('-r, --repair-mode <what>', 'qemu-img check -r: leaks or all; both repair exactly what --repair does (cownbd never repairs corruption)').choices(['leaks', 'all']),
    )
    .option('--json', "machine-readable output (cownbd's document; --output=json: qemu-img's)")
    .addOption(outputOption(true))
    .addOption(forceShareOption());
  // An overlay over an s3:// base: its pinned version must exist (in the store or cached here).
  addObjectStoreOptions(check).action(async (file: string, flags: CheckFlags) => (await actions()).checkAction(file, flags));
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
    .option('--json', "machine-readable output (cownbd's document; --output=json: qemu-img's)")
    .addOption(outputOption(true))
    .addOption(forceShareOption());
  addObjectStoreOptions(map).action(async (file: string, flags: MapFlags) => (await actions()).mapAction(file, flags, io));
}

function registerCompare(program: Command, io: FileIo): void {
  const compare = program
    .command('compare')
    .description('compare the contents of two images, as qemu-img compare: exit 0 identical, 1 different, 2 error')
    .argument('<first>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    .argument('<second>', 'image file, or s3://BUCKET/PREFIX[@VERSION]')
    // qemu-img compare's letters: -f is the FIRST image's format, -F the SECOND's (not a backing format here).
    .addOption(new Option('-f, --format <format>', 'format of the first image (default: detected from its magic)').choices([...FORMAT_NAMES]))
    .addOption(new Option('-F, --second-format <format>', 'format of the second image (default: detected from its magic)').choices([...FORMAT_NAMES]))
    .option('-s, --strict', 'images of different sizes, or whose block status differs (allocated / zero), are different')
    .option('-q, --quiet', 'print nothing; the exit code is the answer')
    .option('--ignore-mtime', 'cow: open even if the backing mtime does not match')
    .addOption(forceShareOption());
  addObjectStoreOptions(compare).action(async (first: string, second: string, flags: CompareFlags) => (await actions()).compareAction(first, second, flags, io));
}
