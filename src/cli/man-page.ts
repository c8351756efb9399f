/**
 * The man page, rendered from the commander program itself (program.ts): every command and
 * subcommand with its usage, description, arguments, option groups and defaults, and the
 * help text added after a command's option list (serve's examples), exactly what
 * `cownbd COMMAND --help` prints, in roff (man(7)). scripts/build-man.mjs writes it to
 * dist/cownbd.1 at `npm run build`; package.json's "man" field installs it.
 *
 * Only commander's public Help methods are used (visibleOptions, optionTerm, groupItems …), so
 * the page follows whatever --help shows without a second list of options to keep in sync.
 */
import type { Command, Help, Option } from 'commander';

/** Escape text for roff: backslashes, and a leading `.`/`'` that would be read as a request. */
function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .split('\n')
    .map((l) => (/^[.']/.test(l) ? `\\&${l}` : l))
    .join('\n');
}

/** Help text a command adds with addHelpText('before'|'after'), as --help prints it. */
function addedHelp(cmd: Command, event: 'beforeHelp' | 'afterHelp'): string {
  let out = '';
  // commander's Command is an EventEmitter (addHelpText listens for these events); its types omit it.
  (cmd as unknown as NodeJS.EventEmitter).emit(event, { error: false, command: cmd, write: (s: string) => (out += s) });
  return out.replace(/^\n+|\s+$/g, '');
}

/** Commands in --help order, subcommands after their parent (`cache show`, `add-cow finalize`);
 * a section's heading is commander's own usage line, which names the parents. */
function commandsOf(cmd: Command, help: Help): Command[] {
  return help.visibleCommands(cmd).filter((c) => c.name() !== 'help').flatMap((c) => [c, ...commandsOf(c, help)]);
}

function optionItems(cmd: Command, help: Help): string[] {
  const out: string[] = [];
  const groups = help.groupItems(cmd.options as Option[], help.visibleOptions(cmd), (o) => o.helpGroupHeading ?? 'Options:');
  for (const [heading, options] of groups) {
    if (options.length === 0) continue;
    out.push('.PP', `\\fB${roff(heading.replace(/:$/, ''))}\\fR`);
    for (const o of options) out.push('.TP', `\\fB${roff(help.optionTerm(o))}\\fR`, roff(help.optionDescription(o)));
  }
  return out;
}

function section(cmd: Command, help: Help): string[] {
  const out = [`.SS "${roff(help.commandUsage(cmd)).replace(/"/g, '\\(dq')}"`];
  const desc = help.commandDescription(cmd);
  if (desc) out.push(roff(desc));
  const before = addedHelp(cmd, 'beforeHelp');
  if (before) out.push('.PP', '.nf', roff(before), '.fi');
  const args = help.visibleArguments(cmd);
  for (const a of args) out.push('.TP', `\\fI${roff(help.argumentTerm(a))}\\fR`, roff(help.argumentDescription(a) || ''));
  out.push(...optionItems(cmd, help));
  const after = addedHelp(cmd, 'afterHelp');
  if (after) out.push('.PP', '.nf', roff(after), '.fi');
  return out;
}

/** The whole page. `extra` are sections written by hand (environment, files, see also). */
export function renderManPage(program: Command, version: string, extra: readonly { title: string; body: string }[] = []): string {
  const help = program.createHelp();
  const name = program.name();
  const lines = [
    `.TH ${name.toUpperCase()} 1 "" "${name} ${roff(version)}" "User Commands"`,
    '.SH NAME',
    `${name} \\- ${roff(program.description())}`,
    '.SH SYNOPSIS',
    `.B ${name}`,
    '.I command',
    '[options] [arguments]',
    '.SH DESCRIPTION',
    roff(`Every command below prints the same text with \`${name} COMMAND --help\`.`),
    '.SH OPTIONS',
    ...optionItems(program, help).slice(2),
    '.SH COMMANDS',
    ...commandsOf(program, help).flatMap((c) => section(c, help)),
  ];
  for (const e of extra) lines.push(`.SH ${roff(e.title.toUpperCase())}`, roff(e.body).replace(/\n\n+/g, '\n.PP\n'));
  return `${lines.join('\n')}\n`;
}
