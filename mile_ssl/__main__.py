"""``python -m mile_ssl``: the same as the ``mile-ssl`` command."""

from mile_ssl.cli import main

main()
