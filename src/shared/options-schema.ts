// The one schema every migration option goes through: the config file's `defaults:`, the
// `ferry migrate` flags, the workflow input's `options` (CLI, Temporal UI, tests) and the
// controller's validation. Limits come from OPTION_LIMITS; messages name the option and its limit.
import { z } from 'zod';
import { CODECS, type Codec } from '../dataplane/types.js';
import { parseBandwidth, parseDuration, parseSize } from '../config/units.js';
import { PHASES } from './names.js';
import { FerryError, ErrorTypes } from './errors.js';
import { DEFAULT_OPTIONS, OPTION_LIMITS, type MigrationOptions, type MigrationOptionsInput } from './options.js';

/** A number in the resolved unit, or a string run through a unit parser whose error becomes the issue. */
function unit(parse: (v: string | number) => number) {
  return z.union([z.string(), z.number()]).transform((v, ctx) => {
    try {
      return parse(v);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: (err as Error).message });
      return z.NEVER;
    }
  });
}

const fmtSize = (n: number) => (n >= 2 ** 20 ? `${n / 2 ** 20}MiB` : `${n / 1024}KiB`);
const L = OPTION_LIMITS;

/** Keys as people write them; values parsed into the units of MigrationOptions. */
export const optionsInputSchema = z.strictObject({
  codec: z.enum(CODECS as readonly [Codec, ...Codec[]], { message: `must be one of ${CODECS.join(', ')}` }).optional(),
  chunkSize: unit(parseSize)
    .refine(
      (n) => n >= L.chunkSize.min && n <= L.chunkSize.max && n % L.chunkSize.multipleOf === 0,
      `must be a multiple of ${fmtSize(L.chunkSize.multipleOf)} between ${fmtSize(L.chunkSize.min)} and ${fmtSize(L.chunkSize.max)}`,
    )
    .optional(),
  bandwidth: unit(parseBandwidth).optional(),
  downtime: unit(parseDuration)
    .refine((n) => n >= L.downtimeMs.min, 'must be more than 0')
    .refine((n) => n <= L.downtimeMs.max, `must be at most ${L.downtimeMs.max / 1000}s (the guest never stays paused longer)`)
    .optional(),
  // A string too: environment variables and form fields are text.
  maxRounds: z
    .union([z.number(), z.string().regex(/^\s*\d+\s*$/, 'must be a whole number').transform(Number)])
    .refine((n) => Number.isInteger(n) && n >= L.maxRounds.min && n <= L.maxRounds.max, `must be a whole number from ${L.maxRounds.min} to ${L.maxRounds.max}`)
    .optional(),
  tls: z.boolean().optional(),
  verify: z.boolean().optional(),
  keepSource: z.boolean().optional(),
  holdAfter: z.array(z.enum(PHASES, { message: `must name phases: ${PHASES.join(', ')}` })).optional(),
});

/** Parsed options: only the keys that were given, in resolved units. */
export type ParsedOptions = Partial<MigrationOptions>;

function toResolvedKeys(o: z.output<typeof optionsInputSchema>): ParsedOptions {
  const out: ParsedOptions = {
    codec: o.codec,
    chunkSize: o.chunkSize,
    bandwidthBytesPerSec: o.bandwidth,
    downtimeMs: o.downtime,
    maxRounds: o.maxRounds,
    tls: o.tls,
    verifyDisk: o.verify,
    keepSourceDisks: o.keepSource,
    holdAfter: o.holdAfter,
  };
  for (const k of Object.keys(out) as (keyof ParsedOptions)[]) if (out[k] === undefined) delete out[k];
  return out;
}

/** What is wrong with each bad option, by key (`downtime`: `must be at most 20s`); empty when all are good. */
export function optionProblems(given: unknown): { key: string; message: string }[] {
  const parsed = optionsInputSchema.safeParse(given ?? {});
  if (parsed.success) return [];
  return parsed.error.issues.flatMap((issue) =>
    issue.code === 'unrecognized_keys'
      ? issue.keys.map((k) => ({ key: k, message: `unknown option (known: ${Object.keys(optionsInputSchema.shape).join(', ')})` }))
      : [{ key: issue.path.map(String).join('.') || 'options', message: issue.message }],
  );
}

/** Parses what a caller wrote; throws FerryError BadInput naming every bad option and its limit. */
export function parseOptions(given: unknown, what = 'options'): ParsedOptions {
  const problems = optionProblems(given);
  if (problems.length) throw new FerryError(ErrorTypes.BadInput, `${what}: ${problems.map((p) => `${p.key}: ${p.message}`).join('; ')}`);
  return toResolvedKeys(optionsInputSchema.parse(given ?? {}));
}

/**
 * The options a run uses: what the caller gave, then the config file's defaults, then the built-in
 * defaults. Both inputs go through the schema, so a UI start and a CLI start with the same input
 * resolve alike.
 */
export function resolveOptions(given: MigrationOptionsInput | undefined, configDefaults?: ParsedOptions): MigrationOptions {
  return { ...DEFAULT_OPTIONS, ...(configDefaults ?? {}), ...parseOptions(given) };
}

/** The schema of the config file's `defaults:` section (same keys, same limits). */
export const defaultsSectionSchema = optionsInputSchema.transform(toResolvedKeys);
