/**
 * `cownbd delete s3://BUCKET/PREFIX@VERSION [--overlays PATH…] [--force]`: withdraw one
 * published version (its manifest; gc reclaims chunks no other version names). Refused
 * while an overlay among --overlays pins it, unless --force (docs/object-store.md
 * "Deleting a version"). Exit 0 deleted, 2 refused (pinned), 1 error (not found, store).
 */
import { createLogger } from '../logging.js';
import { lazyObjectStore, storeConfigFrom, type ObjectStoreFlags } from '../objectstore/cli-options.js';
import { deleteVersion, versionToDelete } from '../objectstore/delete-version.js';
import { StoreClient } from '../objectstore/store-client.js';
import { findPinningOverlays } from '../tools/version-pins.js';

export interface DeleteFlags extends ObjectStoreFlags {
  overlays?: string[];
  force?: boolean;
  json?: boolean;
}

export async function deleteAction(address: string, flags: DeleteFlags): Promise<void> {
  const pinned = versionToDelete(address);
  const log = createLogger({ level: 'warn' });
  const objectStore = lazyObjectStore(flags, log);
  let found;
  try {
    found = await findPinningOverlays(pinned, flags.overlays ?? [], objectStore);
  } finally {
    await objectStore.close();
  }
  const pins = found.pinning;
  if (found.unreadable.length > 0 && flags.force !== true) {
    // An overlay that could not be read might pin the version: not "no pin".
    throw new Error(`${pinned} not deleted: could not check ${found.unreadable.map((u) => `${u.path} (${u.error})`).join(', ')}; --force deletes anyway`);
  }
  if (pins.length > 0 && flags.force !== true) {
    const out = { deleted: null, refused: `pinned by ${pins.length} overlay(s)`, pinnedBy: pins };
    if (flags.json) process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
    else process.stderr.write(`cownbd: ${pinned} not deleted: pinned by ${pins.length} overlay(s) (move them first: cownbd rebase -b s3://…@OTHER, or --force):\n${pins.map((p) => `  ${p}\n`).join('')}`);
    process.exitCode = 2;
    return;
  }
  const client = new StoreClient(storeConfigFrom(flags), log);
  try {
    const r = await deleteVersion(pinned, client);
    if (flags.json) process.stdout.write(`${JSON.stringify({ ...r, pinnedBy: pins }, null, 2)}\n`);
    else {
      const newest = r.remaining.at(-1);
      process.stdout.write(
        `deleted ${r.deleted}${pins.length > 0 ? ` (forced: still pinned by ${pins.join(', ')})` : ''}; ` +
          `${newest === undefined ? 'no version left' : `${r.remaining.length} version(s) left, newest ${newest}`}; ` +
          `its chunks stay until \`cownbd gc s3://${pinned.slice(5).split('/')[0]} --delete\`\n`,
      );
    }
  } finally {
    client.close();
  }
}
