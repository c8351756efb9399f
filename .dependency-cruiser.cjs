/**
 * dependency-cruiser: the layer rules of src/ and no import cycles (run by scripts/test.sh
 * before vitest, and by `npm run lint:deps`). Layers, top to bottom; a module may import
 * its own layer and the layers below it, never one above:
 *
 *   cli/                                 the commands (process: signals, stdout, env)
 *   index.ts, api/                       the library (createServer)
 *   control/                             reload, admin API, snapshots
 *   server/, tools/                      NBD server; image tools (siblings: neither imports the other)
 *   formats/, fleet/                     format records and drivers; machines shipped to the object store (siblings)
 *   objectstore/                         s3:// images and the chunk cache
 *   block/, protocol/, util/, logging.ts devices and file I/O, wire codecs, helpers
 *
 * Cycles count only through imports that exist at run time (static, re-export, dynamic
 * import()); type-only imports are erased by tsc (the same rule test/unit/structure.test.ts
 * used before). Layer rules count type-only imports too: a type from a higher layer is a
 * dependency on it all the same.
 */
const LOW = '^src/(block|protocol|util)/|^src/logging\\.ts$';

/** A rule forbidding `from` to import any module matching `to`. */
function forbid(name, comment, from, to) {
  return { name, comment, severity: 'error', from: { path: from }, to: { path: to } };
}

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'A runtime import cycle: modules that need each other at load time.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true, viaOnly: { dependencyTypesNot: ['type-only'] } },
    },
    forbid('not-to-cli', 'Only the command line imports the command line.', '^src/(?!cli/)', '^src/cli/'),
    forbid('api-above-control', 'The library assembles the control plane, never the other way round.', '^src/(control|server|tools|formats|fleet|objectstore|block|protocol|util)/|^src/logging\\.ts$', '^src/api/|^src/index\\.ts$'),
    forbid('control-above-server', 'The data path (server) and the image tools never depend on the control plane.', '^src/(server|tools|formats|fleet|objectstore|block|protocol|util)/|^src/logging\\.ts$', '^src/control/'),
    forbid('server-tools-siblings', 'The NBD server and the image tools are siblings: neither imports the other.', '^src/server/', '^src/tools/'),
    forbid('tools-server-siblings', 'The NBD server and the image tools are siblings: neither imports the other.', '^src/tools/', '^src/server/'),
    forbid('formats-below-server', 'Formats and the fleet know nothing of the server or the tools.', '^src/(formats|fleet|objectstore|block|protocol|util)/|^src/logging\\.ts$', '^src/(server|tools)/'),
    forbid('objectstore-below-formats', 'The object store is a device source under the formats and the fleet.', '^src/(objectstore|block|protocol|util)/|^src/logging\\.ts$', '^src/(formats|fleet)/'),
    forbid('fleet-formats-siblings', 'The fleet ships devices; it does not open formats (the server wires the two).', '^src/fleet/', '^src/formats/'),
    forbid('formats-fleet-siblings', 'Formats know nothing of the fleet.', '^src/formats/', '^src/fleet/'),
    forbid('low-layers', 'block/, protocol/, util/ and logging.ts are the bottom layer.', LOW, '^src/objectstore/'),
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    exclude: { path: '^(dist|test|node_modules)/' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.build.json' },
    enhancedResolveOptions: { extensions: ['.ts', '.js'] },
  },
};
