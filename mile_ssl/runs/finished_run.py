"""Reading a finished fine-tuning run: its checkpoint, typed config, classes and network.

``mile-ssl train`` writes a run folder::

    <run>/resolved_config.yaml      the config as trained (epochs resolved to steps)
    <run>/.hydra/config.yaml        the composed config (command-line runs only)
    <run>/checkpoints/last.ckpt     Lightning checkpoint with the fine-tuning module's entry

Evaluation, prediction, export, resuming and distillation all start from such a run,
given as the folder or as one of its ``.ckpt`` files; this module is the one place that
reads it, so that every command accepts the same inputs and fails with the same messages.
The checkpoint itself holds the weights, the method, the classes and the normalisation;
the config adds what the checkpoint does not record, such as the training image size.

A network scores what it was trained on only when it sees its input as in training: the
same crop size (and with it the resize before the crop), decoder and normalisation.
:meth:`FinishedRun.data_config` and :meth:`FinishedRun.input_setting` give every command
those settings of the run unless the user sets them, and say when a setting differs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from mile_ssl.adapters.reading import read_checkpoint, resolve_checkpoint_path
from mile_ssl.config import (
    DataConfig,
    MethodConfig,
    MileConfig,
    OptimConfig,
    TrainConfig,
    compose_train_config,
    to_train_config,
)
from mile_ssl.finetune import CHECKPOINT_KEY, FineTuneModule, build_module
from mile_ssl.networks.backbones import BackboneSpec, build_backbone
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.layout import run_folder

log = logging.getLogger(__name__)

RESOLVED_CONFIG_FILE = "resolved_config.yaml"
"""Where in the run folder training writes the config it ran with."""

CONFIG_FILES = (Path(RESOLVED_CONFIG_FILE), Path(".hydra") / "config.yaml")
"""Config files of a run folder, in the order they are looked for."""

INPUT_SETTINGS = ("image_size", "backend")
"""``data.*`` keys that shape what the network sees: the crop size (the resize before the
crop follows it) and the decoder. The normalisation is the checkpoint's own
(:attr:`FinishedRun.preprocessing`); digit grids have a fixed size and no files."""


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint written by a mile_ssl run (tensors only, no code).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is unreadable, truncated or corrupt (naming it), or was
            not written by a mile_ssl fine-tuning module.
    """
    checkpoint = read_checkpoint(Path(path))
    if CHECKPOINT_KEY not in checkpoint or "metadata" not in checkpoint[CHECKPOINT_KEY]:
        raise ValueError(f"{path} is not a checkpoint of a mile_ssl fine-tuning run")
    return checkpoint


def module_from_checkpoint(checkpoint: Mapping[str, Any]) -> FineTuneModule:
    """Rebuild the fine-tuned module, with its weights, from a run checkpoint.

    The module is of the run's own class; a ``distill`` or ``self_train`` run's comes
    without its fixed teacher, which is not part of the run and which evaluating,
    predicting and exporting the student do not need.
    """
    state = checkpoint[CHECKPOINT_KEY]
    backbone_meta = state["metadata"]["backbone"]
    backbone, feature_dim = build_backbone(
        BackboneSpec(backbone_meta["name"], dict(backbone_meta["kwargs"]))
    )
    module = build_module(
        backbone,
        feature_dim,
        int(state["num_classes"]),
        method=MethodConfig(**state["method"]),
        mile=MileConfig(**state["mile"]) if "mile" in state else None,
        optim=OptimConfig(**state["optim"]),
        metadata=state["metadata"],
    )
    module.load_state_dict(checkpoint["state_dict"], strict=True)
    module.completed_steps = int(state["completed_steps"])
    return module


def find_run_config(folder: Path) -> Path | None:
    """The config file of the run in ``folder`` (see :data:`CONFIG_FILES`), if there is one."""
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def read_run_config(path: Path) -> TrainConfig:
    """The typed config in ``path``, a YAML file that training or Hydra wrote.

    It is merged into the :class:`TrainConfig` schema and validated like a config
    given on the command line, so a key that mile_ssl no longer knows is an error.

    Raises:
        ValueError: Naming ``path`` if it is not valid YAML or not a valid config.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path))
        return to_train_config(merged)
    except (OSError, ValueError, TypeError, yaml.YAMLError, OmegaConfBaseException) as error:
        raise ValueError(f"cannot read the run config {path}: {error}") from error


@dataclass(frozen=True)
class FinishedRun:
    """A fine-tuning run read back from disk.

    Attributes:
        checkpoint_path: The ``.ckpt`` file read.
        checkpoint: Its contents (``state_dict`` plus the fine-tuning module's entry).
        folder: The run folder the checkpoint belongs to.
    """

    checkpoint_path: Path
    checkpoint: dict[str, Any]
    folder: Path

    @property
    def state(self) -> dict[str, Any]:
        """What the fine-tuning module saved: steps, method, MILe and optimiser settings."""
        state: dict[str, Any] = self.checkpoint[CHECKPOINT_KEY]
        return state

    @property
    def metadata(self) -> dict[str, Any]:
        """Backbone, preprocessing, class names and labelled-image digest of the run."""
        metadata: dict[str, Any] = self.state["metadata"]
        return metadata

    @property
    def num_classes(self) -> int:
        """Width of the classifier head."""
        return int(self.state["num_classes"])

    @property
    def class_names(self) -> list[str]:
        """Class names in head order; empty if the run stored none."""
        return list(self.metadata.get("class_names") or [])

    @property
    def preprocessing(self) -> Preprocessing:
        """The normalisation the network expects (ImageNet statistics if none is stored)."""
        stored = self.metadata.get("preprocessing")
        return Preprocessing.from_dict(dict(stored)) if stored else Preprocessing()

    @property
    def config_path(self) -> Path | None:
        """The run's config file, if the run folder has one."""
        return find_run_config(self.folder)

    @functools.cached_property
    def config(self) -> TrainConfig:
        """The config the run trained with, read on first use.

        Raises:
            FileNotFoundError: Naming the run folder and the files looked for, if the
                checkpoint has no config next to it.
            ValueError: Naming the config file, if it cannot be read as a config.
        """
        path = self.config_path
        if path is None:
            names = " or ".join(str(name) for name in CONFIG_FILES)
            raise FileNotFoundError(
                f"no run config next to {self.checkpoint_path}: expected {names} in {self.folder}"
            )
        return read_run_config(path)

    @functools.cached_property
    def trained_data(self) -> DataConfig | None:
        """The data settings the run trained with, if its config is there and readable.

        An unreadable config is a warning naming the file, not an error: the caller can
        still give every setting.
        """
        if self.config_path is None:
            return None
        try:
            return self.config.data
        except ValueError as error:
            log.warning("%s", error)
            return None

    @property
    def image_size(self) -> int | None:
        """Training image size, if the run's config is there and sets one.

        The checkpoint does not record it. Digit-grid runs have a fixed 24 x 24 input,
        so they report none; so does a run whose config is missing or unreadable (a
        warning names the file), since the caller can still choose a size.
        """
        data = self.trained_data
        return None if data is None or data.name == "digits" else data.image_size

    def input_setting(self, key: str, given: Any = None, *, option: str | None = None) -> Any:
        """The value of the input setting ``data.<key>`` to use: ``given``, else the run's.

        A ``given`` value that differs from the run's is used and said in one warning
        line, since the network then sees other input than it trained on.

        Args:
            key: One of :data:`INPUT_SETTINGS`.
            given: The user's value, ``None`` if the user gave none.
            option: How the user gave it, for the warning (default ``data.<key>``).

        Returns:
            ``given``, else the run's value (``None`` if the run does not record one).
        """
        data = self.trained_data
        trained = getattr(data, key) if data is not None and data.name != "digits" else None
        if given is None:
            return trained
        if trained is not None and given != trained:
            log.warning(
                "%s=%s differs from the run, which trained with data.%s=%s: the network "
                "sees other input than in training, so its scores are not the run's",
                option or f"data.{key}",
                given,
                key,
                trained,
            )
        return given

    def data_config(self, overrides: Sequence[str] = ()) -> DataConfig:
        """The data to evaluate the run on: its own, or ``overrides`` with its input settings.

        Without overrides, the run's data settings as it trained (its validation set
        included); where the run has no readable config, the shipped defaults. With
        overrides (``data=...``, ``data.KEY=...``), the shipped defaults with those
        applied, and each of :data:`INPUT_SETTINGS` the overrides leave alone taken from
        the run (:meth:`input_setting`).

        Raises:
            ValueError: If an override is not a valid data setting.
        """
        if not overrides and self.trained_data is not None:
            return self.trained_data
        data = compose_train_config(["checkpoint=scratch", *overrides]).data
        given = _overridden_keys(overrides)
        settings = {
            key: self.input_setting(key, getattr(data, key) if f"data.{key}" in given else None)
            for key in INPUT_SETTINGS
        }
        chosen = {key: value for key, value in settings.items() if value is not None}
        if data.name == "digits":
            return data
        return replace(data, **chosen)

    def build_module(self) -> FineTuneModule:
        """The fine-tuned module with its trained weights (see :func:`module_from_checkpoint`)."""
        return module_from_checkpoint(self.checkpoint)


def _overridden_keys(overrides: Sequence[str]) -> set[str]:
    """The config keys (or groups) ``overrides`` set, as Hydra parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mile_ssl.config.overrides import quote_paths_with_equals

    parsed = OverridesParser.create().parse_overrides(quote_paths_with_equals(overrides))
    return {override.key_or_group for override in parsed}


def read_finished_run(path: str | Path, *, exact_file: bool = False) -> FinishedRun:
    """Read the run that ``path`` designates: its folder, ``checkpoints/`` or a ``.ckpt`` file.

    Args:
        path: The run.
        exact_file: Accept only a checkpoint file (resuming continues from that exact
            file, so a folder would be a guess).

    Raises:
        FileNotFoundError: If nothing exists at ``path``.
        IsADirectoryError: If ``exact_file`` is set and ``path`` is a folder.
        ValueError: Naming the file if it is unreadable, truncated or not a checkpoint
            of a mile_ssl run, or naming a folder with no single checkpoint to choose.
    """
    checkpoint_path = Path(path) if exact_file else resolve_checkpoint_path(path)
    checkpoint = read_run_checkpoint(checkpoint_path)
    return FinishedRun(checkpoint_path, checkpoint, run_folder(checkpoint_path))
