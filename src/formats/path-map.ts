/**
 * Path maps for paths RECORDED in overlay headers (a cow backing file, an add-cow image or
 * backing file): `OLD=NEW` rewrites a resolved path equal to OLD, or under OLD/, to the
 * same place under NEW. For overlays made on another machine or before a base moved, e.g.
 * served from a container that mounts the host's /srv/images at /images:
 *
 *   --backing-path-map /srv/images=/images      /srv/images/base.img → /images/base.img
 *
 * Whole path components only (/srv/img does not match /srv/images), longest OLD first.
 * A mapped backing is validated exactly as the recorded one would be (cow: size and
 * mtime), so a map can never make a wrong base acceptable. Explicit overrides (the
 * `backingFile` open option) are the operator's own paths and are never mapped.
 */
import path from 'node:path';

export interface PathMapping {
  readonly from: string;
  readonly to: string;
}

/** Parse `OLD=NEW` (both absolute). Throws an Error naming the spec otherwise. */
export function parsePathMapping(spec: string): PathMapping {
  const eq = spec.indexOf('=');
  const from = eq < 0 ? '' : spec.slice(0, eq);
  const to = eq < 0 ? '' : spec.slice(eq + 1);
  if (!path.isAbsolute(from) || !path.isAbsolute(to)) {
    throw new Error(`--backing-path-map must be OLD=NEW with two absolute paths (got "${spec}")`);
  }
  return { from: path.resolve(from), to: path.resolve(to) };
}

/** `file` (absolute) rewritten by the longest matching mapping, or unchanged. */
export function mapRecordedPath(file: string, maps: readonly PathMapping[] | undefined): string {
  if (!maps?.length) return file;
  let best: PathMapping | undefined;
  for (const m of maps) {
    const under = m.from === '/' ? file.startsWith('/') : file === m.from || file.startsWith(`${m.from}/`);
    if (under && (!best || m.from.length > best.from.length)) best = m;
  }
  if (!best) return file;
  return path.join(best.to, path.relative(best.from, file));
}
