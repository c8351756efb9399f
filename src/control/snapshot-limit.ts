/**
 * How many snapshot layers one export may have (`serve --max-snapshots`, `[limits]
 * max-snapshots`). Every live or offline snapshot adds a layer to the export's chain, and
 * a chain deeper than MAX_CHAIN_DEPTH (64, src/formats/open-image.ts) is refused at open:
 * an unbounded count would end with an export that no longer opens. The admin API
 * refuses (409) the snapshot that would pass the limit.
 */

/** Half the chain limit: leaves room for the top, the base and layers made by hand. */
export const DEFAULT_MAX_SNAPSHOTS = 32;

/** The highest accepted limit: with the top and the base, 64 layers. */
export const MAX_SNAPSHOTS_LIMIT = 62;
