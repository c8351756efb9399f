/**
 * `node --import test/helpers/record-modules.mjs …`: record every module the process
 * resolves (ESM imports, dynamic import() and CommonJS require alike) and write the URLs,
 * one per line, to the file named by $COWNBD_MODULE_LOG when the process exits.
 * test/cli/startup.test.ts uses it to see which libraries a command loads.
 *
 * Plain JavaScript: it runs inside the CLI under test (dist/, no TypeScript loader).
 * module.registerHooks (Node >= 22.15) runs in-thread and sees require() too, unlike the
 * off-thread module.register hooks.
 */
import { writeFileSync } from 'node:fs';
import { registerHooks } from 'node:module';

const out = process.env.COWNBD_MODULE_LOG;
if (!out) throw new Error('record-modules.mjs: set COWNBD_MODULE_LOG to the file to write');
if (typeof registerHooks !== 'function') throw new Error(`record-modules.mjs: module.registerHooks needs Node >= 22.15 (this is ${process.version})`);

const seen = new Set();
registerHooks({
  resolve(specifier, context, nextResolve) {
    const result = nextResolve(specifier, context);
    seen.add(result.url);
    return result;
  },
});
// 'exit' also runs after process.exit() (the CLI's error path) and with an exit code set.
process.on('exit', () => writeFileSync(out, [...seen].join('\n') + '\n'));
