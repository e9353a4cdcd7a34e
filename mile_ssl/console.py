"""The ``mile-ssl`` console script: the command line, with Ctrl-C quiet from the start.

The command line (:mod:`mile_ssl.cli`) imports torch, Lightning and Hydra, which takes
seconds; a Ctrl-C in those seconds would print a traceback from deep inside an import.
This module imports nothing heavy itself, so it can catch that interrupt.
"""

from __future__ import annotations

import os
import sys

EXIT_SIGINT = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a tool killed by the signal reports, as ``cat FILE | head`` does."""


def main() -> None:
    """Run ``mile-ssl``; a Ctrl-C outside training prints one line and exits with 130.

    Output piped into a reader that stops early (``mile-ssl predict ... | head``) ends
    the command quietly, as for other command-line tools, instead of with a traceback.
    """
    try:
        try:
            from mile_ssl.usage import split_command

            split_command(sys.argv[1:])  # usage and unknown words answered before the imports
            from mile_ssl.cli import main as run_command

            run_command()
        finally:
            sys.stdout.flush()
    except KeyboardInterrupt:
        print("mile-ssl: interrupted", file=sys.stderr)
        raise SystemExit(EXIT_SIGINT) from None
    except BrokenPipeError:
        # Python's advice: point stdout at devnull so that its flush at exit cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_BROKEN_PIPE) from None
