"""The ``mile-ssl`` command words and usage text, answered without importing torch.

``mile-ssl``, ``mile-ssl --help`` and a mistyped command word need neither torch,
Lightning nor Hydra, whose import takes seconds: the console script answers them from
here before importing :mod:`mile_ssl.cli`, which answers them from here too when called
directly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

COMMANDS = (
    "train",
    "demo",
    "from-solo",
    "inspect",
    "eval",
    "predict",
    "export",
    "checkpoints",
    "check-data",
)

USAGE = """usage: mile-ssl COMMAND [ARGS]

commands:
  train [OVERRIDES]   fine-tune with Hydra overrides, e.g.
                      mile-ssl train checkpoint.path=ssl.pt method=mile data.fraction=0.1
                      mile-ssl train --help shows the config groups
  train --config-path DIR --config-name RECIPE.yaml [OVERRIDES]
                      fine-tune from a solo-learn linear/fine-tune recipe
  from-solo RECIPE.yaml [OVERRIDES] [--out FILE]
                      translate a solo-learn recipe, print the mapping, write the config
  check-data DATA OVERRIDES
                      list unreadable images before training, e.g. data=imagenet data.root=DIR
  checkpoints [--download NAME]
                      the public SSL checkpoints known by name (checkpoint.name=NAME)
  inspect PATH [--adapter NAME] [--backbone NAME] [--json]
                      what a checkpoint holds and how mile_ssl would load it
  eval checkpoint=RUN.ckpt [DATA OVERRIDES] [--json]
                      all metrics of a fine-tuned run, e.g. data=imagenet data.root=DIR
  predict IMAGE_OR_FOLDER... checkpoint=RUN.ckpt [--threshold T] [--json]
                      multi-label predictions with class names and probabilities
  export checkpoint=RUN.ckpt [--out DIR]
                      the student as a torchvision/timm state dict, safetensors, model.json
  demo [--out DIR]    pretrain on the digit grids with lightly, fine-tune softmax,
                      sigmoid and MILe, print the comparison table
"""


def split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The command word of ``mile-ssl ARGS`` and its arguments.

    Raises:
        SystemExit: 0 after printing the usage for ``-h`` / ``--help``; 2 after printing
            it to stderr for no arguments or an unknown command word.
    """
    args = list(argv)
    if not args:
        print(USAGE, file=sys.stderr)
        raise SystemExit(2)
    if args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(0)
    command, rest = args[0], args[1:]
    if command not in COMMANDS and "LOCAL_RANK" in os.environ:
        # Lightning's DDP launcher restarts this program for ranks > 0 with
        # sys.argv[1:] of the "train" call, which no longer holds the command word.
        command, rest = "train", args
    if command not in COMMANDS:
        print(f"mile-ssl: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    return command, rest
