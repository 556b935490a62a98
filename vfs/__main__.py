"""`python -m vfs COMMAND ...`: each command lives in the module that owns its idea."""

from __future__ import annotations

import sys

from vfs.cli import dispatch

# command -> (module, function, help); each function takes argv (list[str]) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "layers": ("vfs.models.features", "layers_command", "list a model's layers with output shapes"),
    "index": ("vfs.cache.commands", "index_command", "build (or resume) a feature cache of a dataset"),
    "index-coarse": ("vfs.cache.coarse", "index_coarse_command",
                     "build (or resume) a cache's coarse index for two-stage search"),
    "verify": ("vfs.cache.commands", "verify_command", "read a cache whole, checking every block's size and checksum"),
    "search": ("vfs.demo", "search_command", "search a cache (or, without one, bundled photos)"),
    "experiment": ("vfs.analysis.experiment", "experiment_command", "run the paper's neighbour metrics on caches"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m vfs", COMMANDS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
