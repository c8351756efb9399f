/**
 * Bad fleet settings (docs/fleet.md, "Using it") are refused at start with a message naming
 * the option and the value, before anything is opened: the real CLI, no store needed.
 */
import { describe, expect, it } from 'vitest';
import { parseConfigText } from '../../src/control/config.js';
import { runTool } from '../helpers/clients.js';
import { CLI_PATH } from '../helpers/server.js';
import { S3_ENV } from '../helpers/s3-server.js';

const serve = (args: string[]) => runTool(process.execPath, [CLI_PATH, 'serve', '-p', '0', '--s3-endpoint', 'http://127.0.0.1:9', ...args], { env: S3_ENV, timeoutMs: 30_000 });
const FLEET = ['--base', 's3://golden/base', '--overlay-dir', '/tmp/cownbd-fleet-options-never-created', '--overlay-store'];

describe('fleet options', () => {
  it.each([
    [['--base', 'golden.raw', '--overlay-dir', '/tmp/x', '--overlay-store', 's3://golden/fleet'], '--overlay-store s3://golden/fleet needs an s3:// --base (machines ship into the chunk store of their base); got --base golden.raw'],
    [['--base', 's3://golden/base', '--overlay-store', 's3://golden/fleet'], '--overlay-store s3://golden/fleet needs --overlay-dir (where the machines\' local working copies live)'],
    [[...FLEET, 's3://golden/fleet@20261207T000000Z-00000000'], 'name a place (s3://BUCKET/PREFIX), not a version'],
    [[...FLEET, 'https://golden/fleet'], '--overlay-store: "https://golden/fleet" is not an object-store address'],
    [[...FLEET, 's3://golden/fleet', '--ship', 'sometimes'], '--ship "sometimes": expected on-flush or interval=DURATION'],
    [[...FLEET, 's3://golden/fleet', '--ship', 'interval=1h'], '--ship "interval=1h"'],
    [[...FLEET, 's3://golden/fleet', '--lease-ttl', '0'], '--lease-ttl must be a number of seconds from 1 to 3600 (got "0")'],
  ])('serve %j is refused: %s', async (args, message) => {
    const r = await serve(args);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(message);
  });

  it('the configuration file says the same in [overlays]: store, ship, lease-ttl (a bad value names the key)', () => {
    const head = '[overlays]\nbase = "s3://golden/base"\ndir = "/var/lib/cownbd/vms"\n';
    expect(parseConfigText(`${head}store = "s3://golden/fleet"\nship = "interval=5s"\nlease-ttl = 4\n`, '/etc/cownbd/cownbd.toml')).toMatchObject({
      base: 's3://golden/base',
      overlayStore: 's3://golden/fleet',
      ship: 'interval=5s',
      leaseTtl: 4,
    });
    expect(() => parseConfigText(`${head}ship = "sometimes"\n`, 'c.toml')).toThrow(/ship.*must be "on-flush" or "interval=DURATION"/);
    expect(() => parseConfigText(`${head}lease-ttl = 0\n`, 'c.toml')).toThrow(/lease-ttl.*must be at least 1/);
  });
});
