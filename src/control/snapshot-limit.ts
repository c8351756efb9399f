/**
 * How many snapshot layers one export may have (`serve --max-snapshots`, `[limits]
 * max-snapshots`). Every live or offline snapshot adds a layer to the export's chain, and
 * a chain deeper than MAX_CHAIN_DEPTH (64, src/formats/open-image.ts) is refused at open:
 * an unbounded count would end with an export that no longer opens. The admin API
 * refuses (409) the snapshot that would pass the limit.
 */
import { snapshotLayerFiles } from '../formats/cow/cow-layers.js';

/** Half the chain limit: leaves room for the top, the base and layers made by hand. */
export const DEFAULT_MAX_SNAPSHOTS = 32;

/** The highest accepted limit: with the top and the base, 64 layers. */
export const MAX_SNAPSHOTS_LIMIT = 62;

/** Why `top` may take no more snapshot layers under `max`, or undefined when it may. */
export async function snapshotsFull(top: string, max: number): Promise<string | undefined> {
  const layers = (await snapshotLayerFiles(top)).length;
  if (layers < max) return undefined;
  return `already has ${layers} snapshot layers (--max-snapshots ${max}): compact (merge its oldest layers), reset or delete it before taking another`;
}
