/**
 * Image subcommands (create, info, check, map, commit, convert, rebase, add-cow finalize).
 * Registered on the commander program by cli/main.ts.
 */
import type { Command } from 'commander';

export function registerImageCommands(_program: Command): void {
  // Filled in by the image-tool work.
}
