/**
 * A path taken from an image header, for a message: JSON-quoted, so control bytes (a newline
 * in a crafted or damaged header) are escaped and every error stays one line. Ordinary paths
 * read as `"path"`, exactly as before.
 */
export function quotedPath(file: string): string {
  return JSON.stringify(file);
}
