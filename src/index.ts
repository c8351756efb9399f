/**
 * Public API of cownbd as a library.
 *
 *   const provider = new StaticExportProvider([{ name: '', path: 'disk.cow' }], log);
 *   const server = new NbdServer({ provider, log });
 *   await server.listen({ host: '127.0.0.1', port: 10809 });
 *   …
 *   await server.stop();
 */
export { NbdServer, type ListenEndpoint, type ListenAddress, type NbdServerOptions } from './server/listener.js';
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
export { openImage, probeFormat, type ImageFormat, type OpenImageOptions } from './formats/open-image.js';
export type { BlockDevice, DeviceCapabilities, Extent, IoOptions, ZeroOptions, LayerInfo } from './block/block-device.js';
export { DeviceError, EXTENT_HOLE, EXTENT_ZERO } from './block/block-device.js';
export { CheckedDevice } from './block/checked-device.js';
export { createLogger, silentLogger, type Logger } from './logging.js';
