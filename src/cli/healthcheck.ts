#!/usr/bin/env node
/**
 * Container HEALTHCHECK (and any liveness probe): is an NBD server answering at TARGET?
 *
 *   node dist/cli/healthcheck.js [HOST:PORT | /path/to.sock]     exit 0 healthy, 1 not
 *
 * TARGET defaults to $COWNBD_HEALTHCHECK, else 127.0.0.1:10809. "Answering" means the
 * fixed-newstyle greeting arrives (NBDMAGIC, IHAVEOPT) within 5 s; the probe then sends
 * NBD_OPT_ABORT and leaves, so the server logs a clean abort, not a protocol error. A TCP
 * connect alone would pass while the event loop is wedged; this needs the server to write.
 * Standalone (no commander, no logger): it runs every few seconds.
 */
import net from 'node:net';
import { pathToFileURL } from 'node:url';
import { IHAVEOPT, NBD_MAGIC, NbdClientFlag, NbdOpt } from '../protocol/constants.js';

const GREETING = 18; // NBDMAGIC, IHAVEOPT, u16 handshake flags

export function probe(target: string, timeoutMs = 5000): Promise<string | undefined> {
  return new Promise((resolve) => {
    const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(target);
    const socket = target.startsWith('/') ? net.connect(target) : m ? net.connect(Number(m[2]), m[1]) : undefined;
    if (!socket) {
      resolve(`target must be HOST:PORT or /path/to.sock (got "${target}")`);
      return;
    }
    let got = Buffer.alloc(0);
    const done = (problem: string | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(problem);
    };
    const timer = setTimeout(() => done(`no NBD greeting from ${target} within ${timeoutMs} ms`), timeoutMs);
    socket.on('error', (err) => done(`${target}: ${err.message}`));
    socket.on('close', () => done(`${target} closed the connection before its greeting`));
    socket.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (got.length < GREETING) return;
      if (got.readBigUInt64BE(0) !== NBD_MAGIC || got.readBigUInt64BE(8) !== IHAVEOPT) {
        done(`${target} is not a fixed-newstyle NBD server`);
        return;
      }
      const abort = Buffer.alloc(4 + 16);
      abort.writeUInt32BE(NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES, 0);
      abort.writeBigUInt64BE(IHAVEOPT, 4);
      abort.writeUInt32BE(NbdOpt.ABORT, 12);
      abort.writeUInt32BE(0, 16);
      socket.removeAllListeners('close');
      socket.end(abort, () => done(undefined));
    });
  });
}

// Run only as a program, not when imported (tests import probe()).
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const target = process.argv[2] ?? process.env.COWNBD_HEALTHCHECK ?? '127.0.0.1:10809';
  void probe(target).then((problem) => {
    if (problem) process.stderr.write(`cownbd healthcheck: ${problem}\n`);
    process.exit(problem ? 1 : 0);
  });
}
