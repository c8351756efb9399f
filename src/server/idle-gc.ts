/**
 * Give memory back when the server goes quiet.
 *
 * Buffers dropped by the pool (pooled READ/WRITE memory) are only
 * freed when V8 collects them, and V8 collects when JavaScript allocates — an idle server
 * never does, so the memory stayed resident (measured: ~200 MiB for 8 idle connections
 * after bursts of 4 MiB I/O). After a sweep that released memory we therefore run one
 * full GC and then ask glibc to return the freed heap pages (malloc_trim, native addon).
 *
 * The gc function comes from V8's --expose-gc flag, set at run time and fetched from a
 * fresh context (the standard way to reach it without a command-line flag). Setting a V8
 * flag changes the whole process, so only a program's entry point (the CLI) calls
 * exposeGc() and hands the function to the server (NbdServerOptions.gc); a server built
 * by a library user without one only trims malloc, and memory comes back whenever V8
 * next collects.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { nativeFs } from '../block/native-fs.js';

/**
 * Process-wide: turn on V8's --expose-gc and return `gc`, or undefined where that fails.
 * For programs (cli/), never for library code.
 */
export function exposeGc(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn = vm.runInNewContext('gc') as unknown;
    if (typeof fn === 'function') return fn as () => void;
  } catch {
    // No gc: memory comes back whenever V8 next collects.
  }
  return undefined;
}

/** A function that collects garbage now (with `gc`, if given) and returns freed heap memory to the kernel. */
export function idleReclaimer(gc?: () => void): () => void {
  return () => {
    gc?.();
    nativeFs?.mallocTrim?.();
  };
}
