"""``strongroom completion bash``: a bash completion script made from the parser itself (so it lists
every command and option there is, including those command groups add)."""

from __future__ import annotations

import argparse
from typing import Any

from strongroom.cli.context import AddCommand, Context

EXAMPLES = """examples:
  strongroom completion bash > /etc/bash_completion.d/strongroom      # every new shell
  source <(strongroom completion bash)                                # this shell
"""


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...],
          found: dict[tuple[str, ...], list[str]]) -> None:
    words: list[str] = []
    for action in parser._actions:  # argparse keeps them here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                _walk(child, (*path, name), found)
        else:
            words += [s for s in action.option_strings if s.startswith("--")]
    found[path] = sorted(set(words))


def bash_script(parser: argparse.ArgumentParser) -> str:
    found: dict[tuple[str, ...], list[str]] = {}
    _walk(parser, (), found)
    known = " ".join(":" + ":".join(path) for path in found if path)
    cases = "\n".join(f'        "{":".join(path)}") words="{" ".join(words)}" ;;'
                      for path, words in sorted(found.items()))
    return f"""# bash completion for strongroom (strongroom completion bash)
_strongroom() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word words known=" {known} "
    for word in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        if [[ "$known" == *" :${{path:+$path:}}$word "* ]]; then path="${{path:+$path:}}$word"; fi
    done
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -o default -F _strongroom strongroom
"""


def cmd_completion(args: argparse.Namespace, _ctx: Context) -> None:
    print(bash_script(args.top_parser), end="")


def register(sub: Any, add: AddCommand, top: argparse.ArgumentParser) -> None:
    """``top``: the whole command's parser, whose commands the script completes."""
    p = add(sub, "completion", cmd_completion, "print a shell completion script")
    p.set_defaults(top_parser=top)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("shell", choices=["bash"], help="the shell (bash)")
