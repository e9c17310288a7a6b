// `ferry show ID [--svg FILE] [--json]`: one migration's whole story, finished or not, read from
// its workflow (progress query, result or failure); the rendering lives in ./show/.
import { writeFile } from 'node:fs/promises';
import { EXIT, type CliContext } from './context.js';
import { findMigration } from './find-migration.js';
import { readStory } from './migrate-commands.js';
import { renderStoryText, storyJson } from './show/story.js';
import { renderStorySvg } from './show/story-plot.js';

export async function show(ctx: CliContext, id: string, f: { json?: boolean; svg?: string }): Promise<number> {
  const story = await readStory(await findMigration(ctx, id));
  if (f.svg) {
    await writeFile(f.svg, await renderStorySvg(story));
    process.stderr.write(`picture of ${story.workflowId} written to ${f.svg}\n`);
  }
  process.stdout.write(f.json ? `${JSON.stringify(storyJson(story))}\n` : `${renderStoryText(story)}\n`);
  return EXIT.ok;
}
