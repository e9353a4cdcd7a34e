"""``python -m mile_ssl``: the same as the ``mile-ssl`` command."""

from mile_ssl.console import main

main()
