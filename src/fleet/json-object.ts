/**
 * Decoding the fleet's small JSON objects (lease, head): parse and validate, with an error
 * that names the object, the field and the value that is wrong (as manifest.ts does).
 */
import type { z } from 'zod';

export class FleetObjectError extends Error {
  override name = 'FleetObjectError';
}

export function decodeJson<S extends z.ZodType>(bytes: Buffer, where: string, what: string, schema: S): z.infer<S> {
  let raw: unknown;
  try {
    raw = JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw new FleetObjectError(`${where}: ${what} is not JSON (${(err as Error).message})`);
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.join('.') || '(document)';
    const value = issue.path.reduce<unknown>((v, k) => (v as Record<PropertyKey, unknown> | undefined)?.[k], raw);
    throw new FleetObjectError(`${where}: ${what} field ${field} = ${JSON.stringify(value)?.slice(0, 80)}: ${issue.message}`);
  }
  return parsed.data;
}
