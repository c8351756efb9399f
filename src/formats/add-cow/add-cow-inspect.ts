/**
 * inspect() of the add-cow record: header, names and bitmap without opening the backing
 * (it may be missing: reported, not fatal). add-cow has no size/mtime identity check: the
 * image may be larger than the backing (docs/add-cow-format.md#a2).
 */
import { stat } from 'node:fs/promises';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { remoteStat, withBacking, type InspectRequest } from '../format-record.js';
import { fileSizes, nextOf, recordedBackingReport, type BackingReport, type FileSizes, type InfoSection, type LayerInspection } from '../inspection.js';
import { formatSize } from '../../util/size.js';
import { inspectAddCow, type AddCowInspection } from './add-cow-create.js';

export async function inspectAddCowLayer(path: string, req: InspectRequest): Promise<LayerInspection> {
  const insp = await inspectAddCow(path);
  const imageFile = await fileSizes(insp.imagePath);
  const resolved = req.backingFile ?? insp.backingPath;
  const backing = resolved === undefined ? null : await addCowBackingReport(insp, resolved, req);
  return {
    path,
    format: 'add-cow',
    virtualSize: insp.virtualSize,
    file: await fileSizes(path),
    allocatedBytes: insp.allocatedBytes,
    backing,
    section: addCowInfoSection(insp, imageFile),
    // ALL_ALLOCATED: the backing is ignored, so the chain ends here.
    next: insp.header.allAllocated ? undefined : nextOf(backing),
  };
}

async function addCowBackingReport(insp: AddCowInspection, resolved: string, req: InspectRequest): Promise<BackingReport> {
  const h = insp.header;
  const format = req.backingFormat ?? (h.backingFormat || null);
  // An s3:// backing has no stat(2): its device answers.
  const remote = isObjectStoreUri(resolved) ? await remoteStat(req.openBacking, format ?? 'raw')(resolved).catch(() => undefined) : undefined;
  const exists = remote !== undefined || (await stat(resolved).then(() => true, () => false));
  return recordedBackingReport(h.backingName ?? null, resolved, format, exists, 'backing file format is empty in the header', (f) =>
    remote ? Promise.resolve(remote.size) : withBacking(req.openBacking, resolved, f, (d) => d.size),
  );
}

function addCowInfoSection(a: AddCowInspection, imageFile: FileSizes): InfoSection {
  const h = a.header;
  const json = {
    clusterSize: a.clusterSize,
    clusterBits: h.clusterBits,
    headerSize: h.headerSize,
    features: `0x${h.features.toString(16)}`,
    compatFeatures: `0x${h.compatFeatures.toString(16)}`,
    allAllocated: h.allAllocated,
    bitmapOffset: h.headerSize,
    bitmapLength: a.bitmap.length,
    clusterCount: a.clusterCount,
    allocatedClusters: a.allocatedClusters,
    imageFile: { stored: h.imageName, resolved: a.imagePath, format: h.imageFormat, apparentSize: imageFile.apparentSize, actualSize: imageFile.actualSize },
  };
  const text: Array<[string, string | number]> = [
    ['cluster size', json.clusterSize],
    ['header size', json.headerSize],
    ['bitmap offset', json.bitmapOffset],
    ['bitmap length', json.bitmapLength],
    ['features', `${json.features} (compatible ${json.compatFeatures}${json.allAllocated ? ', ALL_ALLOCATED' : ''})`],
    ['allocated clusters', `${json.allocatedClusters} of ${json.clusterCount}`],
    ['image file', `${h.imageName} -> ${a.imagePath} (${h.imageFormat}, ${formatSize(imageFile.actualSize)} on disk)`],
  ];
  return { key: 'addCow', json, text };
}
