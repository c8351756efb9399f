/**
 * The long-running image subcommands (commit, convert, rebase): their options. Registration
 * only; each action imports image-long-actions.ts (progress bar, SIGINT handling, the
 * tools) when it runs.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { FileIo } from '../block/file-io.js';
import { creatableFormats, FORMAT_NAMES } from '../formats/registry.js';
import { addObjectStoreOptions } from '../objectstore/cli-options.js';
import type { CommitFlags, ConvertFlags, RebaseFlags } from './image-long-actions.js';
import { backingFormatOption, formatOption, layoutOption } from './image-options.js';
import { forceShareOption, outputOption, progressOption } from './qemu-img-habits.js';

const actions = () => import('./image-long-actions.js');

export function registerLongImageCommands(program: Command, io: FileIo): void {
  registerCommit(program, io);
  registerConvert(program, io);
  registerRebase(program, io);
}

function registerCommit(program: Command, io: FileIo): void {
  program
    .command('commit')
    .description('merge an overlay with its backing file: in place (--to, like uml_moo -d) or into a new file (-o, like uml_moo)')
    .argument('<file>', 'overlay file')
    .option('--to <backing>', 'merge IN PLACE into this backing file (it is written; other overlays on it become invalid)')
    .addOption(new Option('-o, --output <file>', 'write the merged image to a new sparse raw file').argParser(commitOutputFile))
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
    .addOption(progressOption())
    .addOption(forceShareOption())
    .option('--json', 'print a JSON result (implies --quiet)')
    .action(async (file: string, flags: CommitFlags) => (await actions()).commitAction(file, flags, io));
}

/**
 * commit's -o names a file, while every other command's --output is qemu-img's format switch:
 * `commit vm.cow --output=json` once wrote a 64 MiB image named "json". A bare json/human is
 * refused; `-o ./json` still writes a file of that name.
 */
export function commitOutputFile(value: string): string {
  if (value === 'json' || value === 'human') {
    throw new InvalidArgumentError(`commit's -o/--output names the file to write, and "${value}" looks like qemu-img's --output=${value}: use --json for a JSON result, or -o ./${value} for a file of that name`);
  }
  return value;
}

function registerConvert(program: Command, io: FileIo): void {
  const convert = program
    .command('convert')
    .description('copy the full view of an image chain into a new raw image, cow overlay or add-cow overlay')
    .argument('<src>', 'source image (any chain)')
    .addOption(new Option('-O, --output-format <format>', 'format of the new image').choices(creatableFormats()).makeOptionMandatory())
    .argument('<dst>', 'new image')
    .addOption(formatOption())
    .addOption(new Option('--source-backing-format <format>', 'format of the source backing file').choices([...FORMAT_NAMES]))
    .addOption(layoutOption())
    .option('--ignore-mtime', 'source cow: accept a backing file whose mtime does not match')
    .option('-B, --backing <path>', 'backing file of the new overlay, as qemu-img convert -B (-O cow: required; -O add-cow: optional)')
    .addOption(new Option('-b <path>', 'same as -B').hideHelp())
    .addOption(new Option('-F, --backing-format <format>', 'format of the new overlay\'s backing file, as qemu-img convert -F').choices([...FORMAT_NAMES]))
    .option('--image <path>', '-O add-cow: image file (default: DST without .add-cow, plus .img)')
    .option('--cluster-size <size>', '-O add-cow: cluster size (default 64K)')
    .option('--force', 'overwrite existing output files')
    .option('-q, --quiet', 'no progress bar')
    .addOption(progressOption())
    .addOption(forceShareOption())
    .option('--json', 'print a JSON result (implies --quiet)')
    .addOption(outputOption());
  // Flattening a chain over an s3:// base into local files (for UML's tools) reads the store.
  addObjectStoreOptions(convert).action(async (src: string, dst: string, flags: ConvertFlags) => (await actions()).convertAction(src, dst, flags, io));
}

function registerRebase(program: Command, io: FileIo): void {
  const rebase = program
    .command('rebase')
    .description('point an overlay at a different backing file (safe: copies sectors that differ; --unsafe: header only)')
    .argument('<file>', 'overlay file')
    .requiredOption('-b, --backing <path>', 'the new backing file')
    .addOption(backingFormatOption())
    .addOption(formatOption())
    .addOption(layoutOption())
    .option('-u, --unsafe', 'only rewrite the header (the caller guarantees the new backing has the same content), as qemu-img rebase -u')
    .option('--ignore-mtime', 'cow: accept an old backing file whose mtime does not match')
    .option('--force', 'cow: accept a new backing whose mtime does not fit 32 bits')
    .option('-q, --quiet', 'no progress bar')
    .addOption(progressOption())
    .option('--json', 'print a JSON result (implies --quiet)')
    .addOption(outputOption());
  // The old backing may be an s3:// base (moving an overlay onto a local copy of it).
  addObjectStoreOptions(rebase).action(async (file: string, flags: RebaseFlags) => (await actions()).rebaseAction(file, flags, io));
}
