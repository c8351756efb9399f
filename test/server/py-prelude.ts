/**
 * Python (libnbd) snippets shared by the black-box server tests. Every script gets
 * `URI` (and other vars) injected by runNbdPython and prints one JSON line.
 */
export const PRELUDE = `
import nbd, json, errno, sys
def conn(uri=None, meta=(), strict=True):
    h = nbd.NBD()
    for m in meta:
        h.add_meta_context(m)
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri or URI)
    return h
def err_of(fn):
    """0 on success, else the errno NAME the server sent (e.g. 'EINVAL')."""
    try:
        fn()
        return 0
    except nbd.Error as e:
        # python-libnbd reports errno as a name ('EINVAL') or a number, by version.
        return e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, str(e.errno))
def out(obj):
    print(json.dumps(obj))
`;

/** Parse the last JSON line a python script printed. */
export function lastJson<T = Record<string, unknown>>(stdout: string): T {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as T;
}
