/**
 * Image subcommands (create, add-cow finalize; info/check/map/commit/convert/rebase come
 * with the image tool). Registered on the commander program by cli/main.ts.
 * Exit codes follow qemu-img: 0 success, 1 error.
 */
import { type Command, Option } from 'commander';
import { createAddCow, finalizeAddCow } from '../formats/add-cow/index.js';
import { createCow } from '../formats/cow/index.js';
import { IMAGE_FORMATS, type ImageFormat } from '../formats/open-image.js';
import { parseSize } from '../util/size.js';

interface CreateFlags {
  format: 'cow' | 'add-cow';
  backing?: string;
  backingFormat?: ImageFormat;
  image?: string;
  clusterSize?: string;
  size?: string;
  force?: boolean;
}

export function registerImageCommands(program: Command): void {
  program
    .command('create')
    .description('create a copy-on-write overlay (cow: UML v3 like uml_mkcow; add-cow: metadata + image file)')
    .addOption(new Option('-f, --format <format>', 'overlay format').choices(['cow', 'add-cow']).makeOptionMandatory())
    .argument('<file>', 'overlay file to create')
    .option('-b, --backing <path>', 'backing (base) image; never modified')
    .addOption(new Option('-F, --backing-format <format>', 'format of the backing image (never probed)').choices([...IMAGE_FORMATS]))
    .option('--image <path>', 'add-cow: image file holding guest data (created if missing)')
    .option('--cluster-size <size>', 'add-cow: cluster size, 4K..2M (default 64K)')
    .option('--size <size>', 'add-cow: virtual size (default: image file size, else backing size)')
    .option('--force', 'overwrite an existing overlay')
    .action(async (file: string, flags: CreateFlags) => {
      if (flags.format === 'cow') {
        if (!flags.backing) throw new Error('create -f cow needs --backing (a cow overlay always has a backing file)');
        if (flags.backingFormat && flags.backingFormat !== 'raw') {
          // The cow header has no format field: record nothing, but the operator must repeat it when serving.
          process.stderr.write(`note: cow headers cannot record the backing format; pass --backing-format ${flags.backingFormat} when opening\n`);
        }
        await createCow(file, { backingFile: flags.backing, force: flags.force });
      } else {
        if (!flags.image) throw new Error('create -f add-cow needs --image (the file that holds guest data)');
        await createAddCow(file, {
          imageFile: flags.image,
          backingFile: flags.backing,
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
}
