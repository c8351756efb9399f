/**
 * Refuse a Node.js older than package.json's `engines` before anything else loads.
 *
 * npm only warns (EBADENGINE) when a package is installed on an older Node, and cownbd then
 * half-works until it reaches an API the old Node lacks. main.ts imports this module first:
 * ES modules evaluate their imports in order, so this check runs before the rest of the CLI
 * is even loaded. It is the CLI's own guard — the library never exits the process.
 */
import { readFileSync } from 'node:fs';

/** The lowest major version an `engines.node` range such as ">=22" or "^22.3.0 || >=24" admits. */
export function minimumMajor(range: string): number | undefined {
  const majors = [...range.matchAll(/(\d+)(?:\.\d+)*/g)].map((m) => Number(m[1]));
  return majors.length ? Math.min(...majors) : undefined;
}

/** The refusal line for `version` (e.g. "20.20.2") under `range`, or undefined when it is new enough. */
export function nodeVersionProblem(version: string, range: string): string | undefined {
  const need = minimumMajor(range);
  const have = Number(version.split('.')[0]);
  if (need === undefined || !Number.isFinite(have) || have >= need) return undefined;
  return `cownbd needs Node.js ${range} (package.json "engines"); this is Node.js ${version} (${process.execPath}). Install Node ${need} or newer, or run it through npm scripts, which use the pinned node devDependency.`;
}

function enginesRange(): string | undefined {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { engines?: { node?: string } };
    return pkg.engines?.node;
  } catch {
    return undefined;
  }
}

const range = enginesRange();
const problem = range === undefined ? undefined : nodeVersionProblem(process.versions.node, range);
if (problem) {
  process.stderr.write(`cownbd: ${problem}\n`);
  process.exit(1);
}
