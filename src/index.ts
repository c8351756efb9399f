/**
 * Public API of cownbd as a library: what `import … from 'cownbd'` reaches (package.json's
 * "exports" map publishes this file only). docs/library.md shows it:
 *
 *   import { createServer } from 'cownbd';
 *   const server = await createServer({ export: [{ name: 'disk', path: 'disk.cow' }], listen: [{ host: '127.0.0.1', port: 0 }] });
 *   await server.listen();
 *   console.log(server.uri('disk'));
 *   …
 *   await server.close();
 *
 * Nothing exported here changes the process (signals, stdout, V8 flags): see
 * api/create-server.ts. Lower levels (NbdServer with an ExportProvider, openImage) are
 * here for programs that assemble a server of their own.
 */
// The server, as `cownbd serve` assembles it.
export { createServer, type CreateServerOptions, type CownbdServer } from './api/create-server.js';
export { DEFAULT_ENDPOINT, type ServerConfig } from './api/server-config.js';
export { formatUri } from './api/endpoints.js';
export type { ReloadResult } from './control/reload.js';
export type { ControlPlane } from './control/control-plane.js';
export type { AdminEndpoint } from './control/endpoint.js';

// Lower level: an NbdServer over export providers.
export { NbdServer, type ListenEndpoint, type ListenAddress, type NbdServerOptions, type ReadPath } from './server/listener.js';
export {
  StaticExportProvider,
  CompositeExportProvider,
  transmissionFlags,
  blockSizeConstraints,
  type ExportProvider,
  type ExportInfo,
  type ExportHandle,
  type ExportSummary,
  type ExportContext,
  type StaticExportConfig,
} from './server/exports.js';
export { OverlayDirProvider, EphemeralProvider, type BaseImage } from './server/overlay-providers.js';
export { buildServerSecurity, SECURITY_DEFAULTS, type SecurityOptions, type ServerSecurity } from './server/security.js';
export { TLS_MODES, type TlsMode } from './server/tls.js';

// Images: formats, opening, creating.
export { openImage, probeFormat, createImage, IMAGE_FORMATS, type ImageFormat, type OpenImageOptions } from './formats/open-image.js';
export { FORMATS, FORMAT_NAMES, formatByName, detectFormat, recordOf, creatableFormats, UnknownFormatError } from './formats/registry.js';
export type { FormatRecord, CreateRequest, CreateResult } from './formats/format-record.js';

// The image tools (`cownbd info|map|check|commit|convert|rebase`), as functions.
export { runInfo, type InfoReport, type InfoJson } from './tools/info.js';
export { runMap, type MapJson, type MapExtent } from './tools/map.js';
export { runCheck, type CheckJson, type CheckOptions } from './tools/check.js';
export { runCommit, type CommitOptions, type CommitJson, type ToolContext } from './tools/commit.js';
export { runConvert, type ConvertOptions, type ConvertJson } from './tools/convert.js';
export { runRebase, type RebaseOptions, type RebaseJson } from './tools/rebase.js';
export { ToolError } from './tools/errors.js';

// Devices and file I/O.
export type { BlockDevice, DeviceCapabilities, Extent, IoOptions, ZeroOptions, LayerInfo } from './block/block-device.js';
export { DeviceError, EXTENT_HOLE, EXTENT_ZERO } from './block/block-device.js';
export { CheckedDevice } from './block/checked-device.js';
export { FileIo } from './block/file-io.js';
export { defaultIoPolicy, ioPolicyFromEnv, type IoPolicy } from './block/io-policy.js';
export { createLogger, silentLogger, type Logger } from './logging.js';
