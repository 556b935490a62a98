"""`python -m vfs COMMAND ...`: each command lives in the module that owns its idea."""

from __future__ import annotations

import importlib
import sys

from vfs.errors import VFSError

# command -> ("module", "function"); each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "layers": ("vfs.features", "layers_command", "list a model's layers with output shapes"),
    "index": ("vfs.cache_build", "index_command", "build (or resume) a feature cache of a dataset"),
    "search": ("vfs.demo", "search_command", "search bundled photos from the command line"),
    "experiment": ("vfs.experiment", "experiment_command", "run the paper's neighbour metrics on a cache"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<11} {help_}" for name, (_, _, help_) in COMMANDS.items()]
        print("usage: python -m vfs COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
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
