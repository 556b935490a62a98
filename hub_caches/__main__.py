"""`python -m hub_caches COMMAND ...`: list the catalog, push a cache, pull a cache."""

from __future__ import annotations

import importlib
import sys

from vfs.errors import VFSError

# command -> (module, function, help); each function takes argv and returns an exit code
COMMANDS: dict[str, tuple[str, str, str]] = {
    "list": ("hub_caches.catalog", "list_command", "list the published caches the catalog knows"),
    "push": ("hub_caches.push", "push_command", "publish a finished cache as a Hub dataset repo"),
    "pull": ("hub_caches.access", "pull_command", "download a whole published cache, verified"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<6} {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: python -m hub_caches COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nunknown command {argv[0]!r}: pick one of the commands above", file=sys.stderr)
            return 2
        return 0
    module, function, _ = COMMANDS[argv[0]]
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except VFSError as error:  # a problem the message explains: no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
