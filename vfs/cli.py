"""`python -m PACKAGE COMMAND ...` dispatch shared by `vfs` and `hub_caches`.

Each command lives in the module that owns its idea, as `function(argv: list[str]) -> int`; it is
imported only when asked for, so `--help` stays fast. A command raises the library's errors and
never catches them: they become one exit code here, for every command of both packages:

    0  done
    1  LIBRARY_ERROR: a `vfs.VFSError` (`hub_caches` errors derive from it); its message, no traceback
    2  USAGE_ERROR: a bad command line (argparse prints the usage and exits with 2), an unknown command
"""

from __future__ import annotations

import importlib
import sys

from vfs.errors import VFSError

LIBRARY_ERROR = 1  # a VFSError: what was wrong and what to do are in its message
USAGE_ERROR = 2  # argparse's own code for a bad command line, kept for an unknown command too


def dispatch(prog: str, commands: dict[str, tuple[str, str, str]], argv: list[str]) -> int:
    """Run `commands[argv[0]]` = (module, function, help) on `argv[1:]`; a VFSError prints its message."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        width = max(map(len, commands)) + 1
        lines = [f"  {name:<{width}} {help_}" for name, (_, _, help_) in commands.items()]
        print(f"usage: {prog} COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}: pick one of the commands above", file=sys.stderr)
            return USAGE_ERROR
        return 0
    module, function, _ = commands[argv[0]]
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except VFSError as error:  # a problem the message explains: no traceback
        print(f"error: {error}", file=sys.stderr)
        return LIBRARY_ERROR
