"""Shell completion scripts for bash, zsh and fish, generated from the argparse parser (so they never go stale).

Completes command names, each command's flags, and the values of flags with a closed set (`-o`, `--verdict`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

PROG = "gitops-bridge"


@dataclass
class Command:
    name: str
    help: str
    flags: list[str] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)  # flag -> its values
    helps: dict[str, str] = field(default_factory=dict)  # flag -> its help
    positional_choices: list[str] = field(default_factory=list)


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help or "" for c in sub._choices_actions}
    found = []
    for name, sp in sub.choices.items():
        cmd = Command(name, helps.get(name, ""))
        for action in sp._actions:
            if not action.option_strings:
                cmd.positional_choices += [str(c) for c in action.choices or ()]
                continue
            for flag in action.option_strings:
                cmd.flags.append(flag)
                cmd.helps[flag] = (action.help or "").replace("%%", "%")
                if action.choices:
                    cmd.choices[flag] = [str(c) for c in action.choices]
        found.append(cmd)
    return found


def bash(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    cases = []
    for cmd in cmds:
        value_cases = "".join(f"        {flag}) COMPREPLY=($(compgen -W '{' '.join(values)}' -- \"$cur\")); return;;\n"
                              for flag, values in cmd.choices.items())
        words = " ".join(cmd.flags + cmd.positional_choices)
        cases.append(f"    {cmd.name})\n      case \"$prev\" in\n{value_cases}      esac\n"
                     f"      COMPREPLY=($(compgen -W '{words}' -- \"$cur\"));;\n")
    return f"""# bash completion for {PROG}: source <({PROG} completion bash)
_gitops_bridge() {{
  local cur prev cmd i
  cur="${{COMP_WORDS[COMP_CWORD]}}"
  prev="${{COMP_WORDS[COMP_CWORD-1]}}"
  cmd=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break;; esac
  done
  if [[ -z "$cmd" ]]; then
    COMPREPLY=($(compgen -W '{" ".join(c.name for c in cmds)} --help --version' -- "$cur"))
    return
  fi
  case "$cmd" in
{"".join(cases)}  esac
}}
complete -F _gitops_bridge {PROG}
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    return f"""#compdef {PROG}
# zsh completion for {PROG}: source <({PROG} completion zsh)  (uses zsh's bash completion layer)
autoload -U +X compinit && compinit
autoload -U +X bashcompinit && bashcompinit
{bash(parser).split(chr(10), 1)[1]}"""


def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    lines = [f"# fish completion for {PROG}: {PROG} completion fish | source",
             f"complete -c {PROG} -f",
             f"complete -c {PROG} -n '__fish_use_subcommand' -l version -d 'print the version'"]
    for cmd in cmds:
        lines.append(f"complete -c {PROG} -n '__fish_use_subcommand' -a {cmd.name} -d {_fish_quote(cmd.help)}")
        when = f"'__fish_seen_subcommand_from {cmd.name}'"
        for flag in cmd.flags:
            if not flag.startswith("--") and flag != "-h" and len(flag) != 2:
                continue
            opt = f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
            values = f" -x -a {_fish_quote(' '.join(cmd.choices[flag]))}" if flag in cmd.choices else ""
            lines.append(f"complete -c {PROG} -n {when} {opt}{values} -d {_fish_quote(cmd.helps[flag][:80])}")
        if cmd.positional_choices:
            lines.append(f"complete -c {PROG} -n {when} -a {_fish_quote(' '.join(cmd.positional_choices))}")
    return "\n".join(lines) + "\n"


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](parser).rstrip("\n")
