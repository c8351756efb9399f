// A real S3 REST server (s3rver, devDependency) for the object-store benchmark, in its own
// process so its CPU can be measured apart from cownbd's.
//   node s3rver-child.mjs DIR BUCKET   → prints "port N" when listening
import S3rver from 's3rver';

const [dir, bucket] = process.argv.slice(2);
const server = new S3rver({ port: 0, address: '127.0.0.1', silent: true, directory: dir, configureBuckets: [{ name: bucket }] });
const { port } = await server.run();
process.stdout.write(`port ${port}\n`);
process.on('SIGTERM', () => server.close().then(() => process.exit(0)));
