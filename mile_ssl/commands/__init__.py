"""The command-line commands of ``mile-ssl``, one module each (train, eval, predict, export...)."""
