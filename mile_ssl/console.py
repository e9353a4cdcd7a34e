"""The ``mile-ssl`` console script: the command line, with Ctrl-C quiet from the start.

The command line (:mod:`mile_ssl.cli`) imports torch, Lightning and Hydra, which takes
seconds; a Ctrl-C in those seconds would print a traceback from deep inside an import.
This module imports nothing heavy itself, so it can catch that interrupt.
"""

from __future__ import annotations

import sys

EXIT_SIGINT = 130


def main() -> None:
    """Run ``mile-ssl``; a Ctrl-C outside training prints one line and exits with 130."""
    try:
        from mile_ssl.cli import main as run_command

        run_command()
    except KeyboardInterrupt:
        print("mile-ssl: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_SIGINT) from None
