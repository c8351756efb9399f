/**
 * `--config FILE` (default: $COWNBD_CONFIG) on every command that can meet an s3:// image,
 * serve excepted (its own --config reads the whole file): the [object-store] table of the
 * file serve reads becomes that command's defaults, so an operator names the store once and
 * `cownbd info vm7.cow` over an s3:// backing finds it (docs/object-store.md#one-default-for-every-command).
 *
 * Order, for every command: the command line, then this file, then COWNBD_S3_* and the AWS
 * variables (storeConfigFrom), then built-in defaults. The file is read when the command
 * runs (a preAction hook), never at import, and only when one is named; its errors are the
 * serve config loader's (file, line, key).
 */
import type { Command } from 'commander';
import type { ObjectStoreFlags } from '../objectstore/cli-options.js';

/** The ObjectStoreFlags a config file's [object-store] table can set. */
const KEYS: ReadonlyArray<keyof ObjectStoreFlags> = ['s3Endpoint', 's3Region', 's3Addressing', 's3MaxGets', 's3Timeout', 's3Retries', 'cacheDir', 'cacheSize', 'cacheMinFree'];

function allCommands(cmd: Command): Command[] {
  return cmd.commands.flatMap((c) => [c, ...allCommands(c)]);
}

function takesConfigDefaults(cmd: Command): boolean {
  return cmd.name() !== 'serve' && cmd.options.some((o) => o.long === '--cache-dir');
}

/** Call after every command is registered. */
export function addConfigDefaults(program: Command): void {
  for (const cmd of allCommands(program).filter(takesConfigDefaults)) {
    cmd.option('--config <file>', 'object-store defaults from the [object-store] table of this serve config file (default: $COWNBD_CONFIG); options given here win');
  }
  program.hook('preAction', async (_program, action) => {
    if (takesConfigDefaults(action)) await applyConfigDefaults(action);
  });
}

async function applyConfigDefaults(action: Command): Promise<void> {
  const file = (action.getOptionValue('config') as string | undefined) ?? (process.env.COWNBD_CONFIG || undefined);
  if (file === undefined) return;
  const { loadConfigFile } = await import('../control/config.js');
  const fromFile = await loadConfigFile(file);
  for (const key of KEYS) {
    const value = fromFile[key];
    if (value === undefined || action.getOptionValueSource(key) === 'cli') continue;
    action.setOptionValueWithSource(key, value, 'config');
  }
}
