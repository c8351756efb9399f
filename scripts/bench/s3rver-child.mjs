// A real S3 REST server (s3rver, devDependency) for the object-store benchmarks, in its own
// process so its CPU can be measured apart from cownbd's.
//   node s3rver-child.mjs DIR BUCKET [--conditional]   → prints "port N" when listening
// --conditional (the fleet benchmark): the conditional PUTs, per-key serialisation and
// all-or-nothing PUTs that docs/fleet.md requires of a store, which s3rver lacks — the same
// middleware as the tests' S3 server (test/helpers/s3-conditional.ts; Node 24 strips its types).
import S3rver from 's3rver';

const [dir, bucket, flag] = process.argv.slice(2);
const server = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: bucket }] });
if (flag === '--conditional') {
  const { conditionalWrites } = await import('../../test/helpers/s3-conditional.ts');
  // Before s3rver's own handlers, as test/helpers/s3-server.ts does.
  server.middleware.unshift(conditionalWrites());
}
const { port } = await server.run();
process.stdout.write(`port ${port}\n`);
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
