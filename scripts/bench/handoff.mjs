// Measured prototype for docs/performance.md (multi-core design): can a process that ran
// the NBD handshake hand the connection to a worker process, and what does it cost?
//
//   node scripts/bench/handoff.mjs [connections=200]
//
// The parent accepts TCP connections, reads a 16-byte "handshake" (standing in for NBD
// option haggling), then hands the socket to a forked worker with child.send(msg, socket),
// together with whatever bytes it had already read past the handshake (a client may
// pipeline its first requests right behind NBD_OPT_GO). The worker echoes every byte after
// the handshake. The client checks that the echo is exactly what it sent after the
// handshake (no byte lost, duplicated or reordered by the handoff) and measures the time
// from its last handshake byte to the first echoed byte. Prints median/p99 handoff latency.
// Not part of the table: it measures the mechanism, not a server.
import { fork } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

const HANDSHAKE = 16;

if (process.argv[2] === 'worker') {
  // Worker: adopt handed-over sockets; leftover bytes come first, then the socket's own.
  process.on('message', (msg, socket) => {
    if (msg?.kind !== 'conn' || !socket) return;
    const leftover = Buffer.from(msg.leftover, 'base64');
    if (leftover.length) socket.write(leftover);
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('end', () => socket.end());
    socket.resume();
  });
  process.send({ kind: 'ready' });
} else {
  const connections = Number(process.argv[2] ?? 200);
  const worker = fork(fileURLToPath(import.meta.url), ['worker'], { serialization: 'advanced' });
  await new Promise((resolve) => worker.once('message', resolve));

  const server = net.createServer({ pauseOnConnect: true, noDelay: true }, (socket) => {
    let got = Buffer.alloc(0);
    const onData = (chunk) => {
      got = Buffer.concat([got, chunk]);
      if (got.length < HANDSHAKE) return;
      // Stop reading at the handle NOW. socket.pause() alone only stops 'data' events on a
      // stream socket: libuv keeps reading into the parent's buffer, and those bytes are
      // lost with the parent's socket (first version of this prototype: connection 1 lost
      // its later bytes). In flowing mode every byte read so far was delivered to onData
      // synchronously, so `got` holds all of it. (cownbd's shared-read sockets stop at the
      // handle on pause(): server/shared-reads.ts.)
      socket._handle?.readStop();
      socket.off('data', onData);
      socket.pause();
      // keepOpen false: the parent's copy closes once sent; the worker owns the descriptor.
      worker.send({ kind: 'conn', leftover: got.subarray(HANDSHAKE).toString('base64') }, socket, { keepOpen: false });
    };
    socket.on('data', onData);
    socket.resume();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();

  const latencies = [];
  for (let i = 0; i < connections; i++) {
    latencies.push(await oneClient(port, i));
  }
  latencies.sort((a, b) => a - b);
  const q = (p) => latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))].toFixed(1);
  console.log(`handoff: ${connections} connections, every echo exact; first reply after the handshake: median ${q(0.5)} µs, p99 ${q(0.99)} µs`);
  worker.kill();
  server.close();
}

/** One client: handshake + pipelined bytes in one write, more after; returns µs to first echo. */
function oneClient(port, i) {
  return new Promise((resolve, reject) => {
    const c = net.connect({ port, host: '127.0.0.1', noDelay: true });
    const pipelined = Buffer.from(`pipelined-${i}|`);
    const later = Buffer.from(`later-${i}-`.repeat(100));
    const want = Buffer.concat([pipelined, later]);
    let echoed = Buffer.alloc(0);
    let t0 = 0n;
    let first = 0;
    c.on('connect', () => {
      t0 = process.hrtime.bigint();
      c.write(Buffer.concat([Buffer.alloc(HANDSHAKE, 0x41), pipelined]));
      setTimeout(() => c.write(later, () => c.end()), 1);
    });
    c.on('data', (chunk) => {
      if (!first) first = Number(process.hrtime.bigint() - t0) / 1000;
      echoed = Buffer.concat([echoed, chunk]);
    });
    c.on('end', () => {
      if (!echoed.equals(want)) reject(new Error(`connection ${i}: echo differs (${echoed.length} of ${want.length} bytes)`));
      else resolve(first);
      c.destroy();
    });
    c.on('error', reject);
  });
}
