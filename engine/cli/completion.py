"""`tandem completion bash`: a completion script made from the command's own parser, so it
never lags behind it — commands, their actions and options, and the names of the modules
configured on this node where a command takes a module."""

from __future__ import annotations

import argparse
import shlex

from tandem.engine.cli.common import EXIT_OK

TAKES_MODULE = {
    "state", "verify", "resync", "logs", "start", "stop", "restart", "swap", "prim", "second",
    "node", "unit", "check",
}  # fmt: skip

SCRIPT = """# bash completion for tandem (tandem completion bash > /etc/bash_completion.d/tandem)
_tandem_modules() {{
    local dir="${{TANDEM_CONFIG_DIR:-/etc/tandem}}/modules" f
    for f in "$dir"/*.toml; do [ -e "$f" ] && basename "$f" .toml; done
}}
_tandem() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="${{COMP_WORDS[1]}}" words=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W {commands} -- "$cur"))
        return
    fi
    case "$command" in
{cases}
    esac
    if [[ "$cur" != -* ]] && [[ " {module_commands} " == *" $command "* ]]; then
        words="$words $(_tandem_modules)"
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _tandem tandem
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> list[str]:
    words = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    return sorted(set(words) | set(_subcommands(parser)))


def bash_script(parser: argparse.ArgumentParser) -> str:
    commands = _subcommands(parser)
    cases = []
    for name, sub in sorted(commands.items()):
        cases.append(f"        {name}) words={shlex.quote(' '.join(_words(sub)))} ;;")
    return SCRIPT.format(
        commands=shlex.quote(" ".join(sorted(commands))),
        cases="\n".join(cases),
        module_commands=" ".join(sorted(TAKES_MODULE)),
    )


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    root: argparse.ArgumentParser,
) -> None:
    completion = commands.add_parser(
        "completion", help="print a shell completion script (tandem completion bash)"
    )
    completion.add_argument("shell", choices=("bash",))
    completion.set_defaults(run=lambda a: _print(bash_script(root)))


def _print(text: str) -> int:
    print(text, end="")
    return EXIT_OK
