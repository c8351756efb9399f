#!/usr/bin/env node
// Writes dist/cownbd.1 (`man cownbd`) from the built commander program, at `npm run build`
// after tsc: the same object `cownbd --help` prints (src/cli/program.ts, src/cli/man-page.ts).
// package.json's "man" field installs it with the package. The sections below the commands
// (environment, files, see also) are the only hand-written part.
import { writeFileSync } from 'node:fs';
import { FileIo } from '../dist/block/file-io.js';
import { ioPolicyFromEnv } from '../dist/block/io-policy.js';
import { buildProgram, packageVersion } from '../dist/cli/program.js';
import { renderManPage } from '../dist/cli/man-page.js';

const EXTRA = [
  {
    title: 'Environment',
    body: [
      'COWNBD_LOG_LEVEL: log level of serve (the --log-level option wins).',
      'COWNBD_BIND: default of serve --bind (the container image sets 0.0.0.0).',
      'COWNBD_ADMIN: default admin endpoint of ctl.',
      'COWNBD_CONFIG: the serve configuration file whose [object-store] table the image and object-store commands use as their defaults (their --config FILE wins).',
      'COWNBD_S3_ENDPOINT, COWNBD_S3_REGION, COWNBD_S3_ADDRESSING: default object store of every command that reads s3:// images (the command line wins, then the config file, then these, then AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL and AWS_REGION).',
      'AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE: object-store credentials (the AWS default chain).',
      'COWNBD_DEBUG=1: add the stack trace to an error line.',
    ].join('\n\n'),
  },
  {
    title: 'Files',
    body: 'README.md and docs/*.md in the installed package (npm root -g)/cownbd: serving.md, configuration.md, control-plane.md, tls.md, image-tool.md, object-store.md and more.',
  },
  { title: 'See also', body: 'qemu-img(1), qemu-nbd(8), nbdkit(1), nbdinfo(1), nbd-client(8), uml_moo(1)' },
];

// An argument writes elsewhere: test/cli/man-page.test.ts renders a fresh copy to compare.
const out = process.argv[2] ?? new URL('../dist/cownbd.1', import.meta.url);
writeFileSync(out, renderManPage(buildProgram(new FileIo(ioPolicyFromEnv({}))), packageVersion(), EXTRA));
