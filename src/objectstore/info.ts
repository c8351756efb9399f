/**
 * `cownbd info s3://BUCKET/PREFIX[@VERSION]`: what a published image is — its versions,
 * the chosen manifest's geometry, how much of it is stored — without reading chunks.
 */
import { formatSize } from '../util/size.js';
import { manifestMtime } from './manifest.js';
import { listVersions, loadManifest } from './open.js';
import type { StoreClient } from './store-client.js';
import { formatObjectStoreUri } from './uri.js';

export interface ObjectStoreInfoJson {
  filename: string;
  format: 's3';
  endpoint: string;
  version: string;
  versions: string[];
  created: string;
  mtime: number;
  virtualSize: number;
  chunkSize: number;
  chunkPrefix: string;
  chunks: number;
  storedChunks: number;
  distinctChunks: number;
  zeroChunks: number;
  storedBytes: number;
  source: string | null;
}

export async function runObjectStoreInfo(address: string, client: StoreClient): Promise<ObjectStoreInfoJson> {
  const { uri, manifest: m } = await loadManifest(client, address);
  const stored = m.chunks.filter((h): h is string => h !== null);
  const last = m.chunks.length - 1;
  const lastLen = m.virtualSize - last * m.chunkSize;
  return {
    filename: formatObjectStoreUri(uri),
    format: 's3',
    endpoint: client.describe(),
    version: m.version,
    versions: await listVersions(client, uri),
    created: m.created,
    mtime: manifestMtime(m),
    virtualSize: m.virtualSize,
    chunkSize: m.chunkSize,
    chunkPrefix: m.chunkPrefix,
    chunks: m.chunks.length,
    storedChunks: stored.length,
    distinctChunks: new Set(stored).size,
    zeroChunks: m.chunks.length - stored.length,
    storedBytes: stored.length * m.chunkSize - (last >= 0 && m.chunks[last] !== null ? m.chunkSize - lastLen : 0),
    source: m.source ?? null,
  };
}

export function formatObjectStoreInfoText(i: ObjectStoreInfoJson): string {
  const rows: [string, string | number][] = [
    ['image', i.filename],
    ['file format', 's3 (published chunks + immutable manifest)'],
    ['endpoint', i.endpoint],
    ['virtual size', `${formatSize(i.virtualSize)} (${i.virtualSize} bytes)`],
    ['created', `${i.created} (mtime ${i.mtime})`],
    ['chunk size', formatSize(i.chunkSize)],
    ['chunks', `${i.chunks}: ${i.storedChunks} stored (${i.distinctChunks} distinct, ${formatSize(i.storedBytes)}), ${i.zeroChunks} zero`],
    ['chunk objects', `${i.chunkPrefix}<sha256>`],
    ['published from', i.source ?? '(unknown)'],
    ['versions', i.versions.join(', ')],
  ];
  return `${rows.map(([k, v]) => `${k}: ${v}`).join('\n')}\n`;
}
