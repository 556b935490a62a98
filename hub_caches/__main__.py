"""`python -m hub_caches COMMAND ...`: list the catalog, push a cache, pull a cache."""

from __future__ import annotations

import sys

from vfs.cli import dispatch

# command -> (module, function, help); each function takes argv and returns an exit code
COMMANDS: dict[str, tuple[str, str, str]] = {
    "list": ("hub_caches.catalog", "list_command", "list the published caches the catalog knows"),
    "push": ("hub_caches.push", "push_command", "publish a finished cache as a Hub dataset repo"),
    "pull": ("hub_caches.access", "pull_command", "download a whole published cache, verified"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("python -m hub_caches", COMMANDS, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
