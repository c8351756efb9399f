/**
 * External-tool gating for tests. Locally a missing tool skips the test with a loud
 * message; under CI=true a missing tool is a hard failure (nothing is skipped in CI).
 *
 *   const hasQemuImg = requireTool('qemu-img');
 *   it.runIf(hasQemuImg)('converts', ...)
 */
import { execFileSync } from 'node:child_process';

const cache = new Map<string, boolean>();

export function hasTool(name: string): boolean {
  let found = cache.get(name);
  if (found === undefined) {
    try {
      execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
      found = true;
    } catch {
      found = false;
    }
    cache.set(name, found);
  }
  return found;
}

/** Python module availability, e.g. requirePython('nbd') for python3-libnbd. */
export function hasPythonModule(module: string): boolean {
  const key = `python3:${module}`;
  let found = cache.get(key);
  if (found === undefined) {
    try {
      execFileSync('python3', ['-c', `import ${module}`], { stdio: 'ignore' });
      found = true;
    } catch {
      found = false;
    }
    cache.set(key, found);
  }
  return found;
}

/** Skip (locally) or fail (CI=true) when `found` is false; `label` names what is missing. */
export function gate(label: string, found: boolean): boolean {
  if (found) return true;
  if (process.env.CI === 'true') {
    throw new Error(`required test tool "${label}" is missing (CI=true: missing tools are failures)`);
  }
  console.warn(`\n*** SKIPPING tests that need "${label}": not installed (install it or run scripts/test.sh as root) ***\n`);
  return false;
}

/** True when the tool is on PATH; false (skip) locally; throws under CI=true. */
export function requireTool(name: string): boolean {
  return gate(name, hasTool(name));
}

export function requirePython(module: string): boolean {
  return gate(`python3 module ${module}`, hasPythonModule(module));
}
