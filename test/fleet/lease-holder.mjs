// A lease holder in its own process, for the pause test (lease.test.ts): takes machine
// ARGV[3]'s lease over the store at ARGV[2], claims its head, renews every TTL/3, and answers
// commands on stdin with one JSON line each: "status" → {valid, lost, fenced};
// "advance VERSION" → {advanced} or {error}. Built modules: run after `tsc -p tsconfig.build.json`.
import { createInterface } from 'node:readline';
const dist = new URL('../../dist/', import.meta.url);
const { StoreClient } = await import(new URL('objectstore/store-client.js', dist).href);
const { MachineLease } = await import(new URL('fleet/lease.js', dist).href);
const { MachineHead } = await import(new URL('fleet/machine-head.js', dist).href);
const { machineKeys } = await import(new URL('fleet/fleet-keys.js', dist).href);
const [endpoint, machine, ttl] = process.argv.slice(2);
const client = new StoreClient({ endpoint, region: 'us-east-1', forcePathStyle: true, maxParallelGets: 4, requestTimeoutMs: 1000, deadlineMs: 3000, maxAttempts: 3 });
const keys = machineKeys({ bucket: 'golden', prefix: 'fleet' }, machine);
const lease = await MachineLease.take(client, keys, { owner: 'paused-holder', ttlMs: Number(ttl) });
let lost = false;
lease.startRenewing(() => (lost = true));
const head = await MachineHead.claim(client, keys, { generation: lease.generation, owner: 'paused-holder', base: 's3://golden/base@20261207T000000Z-00000000' });
const say = (o) => process.stdout.write(`${JSON.stringify(o)}\n`);
say({ held: true, generation: lease.generation });
for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, arg] = line.trim().split(' ');
  if (cmd === 'status') say({ valid: lease.valid(), lost, fenced: head.isFenced() });
  else if (cmd === 'advance') {
    try {
      await head.advance(arg);
      say({ advanced: arg });
    } catch (err) {
      say({ error: err.name, message: err.message });
    }
  } else if (cmd === 'exit') break;
}
lease.stopRenewing();
client.close();
