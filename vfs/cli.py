"""`python -m PACKAGE COMMAND ...` dispatch shared by `vfs` and `hub_caches`.

Each command lives in the module that owns its idea, as `function(argv: list[str]) -> int`; it is
imported only when asked for, so `--help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

from vfs.errors import VFSError


def dispatch(prog: str, commands: dict[str, tuple[str, str, str]], argv: list[str]) -> int:
    """Run `commands[argv[0]]` = (module, function, help) on `argv[1:]`; a VFSError prints its message."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        width = max(map(len, commands)) + 1
        lines = [f"  {name:<{width}} {help_}" for name, (_, _, help_) in commands.items()]
        print(f"usage: {prog} COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}: pick one of the commands above", file=sys.stderr)
            return 2
        return 0
    module, function, _ = commands[argv[0]]
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except VFSError as error:  # a problem the message explains: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1
