"""Export the fine-tuned student of a run for use without mile_ssl.

A run checkpoint holds the whole Lightning state: student, teacher, optimiser state and
the MILe schedule. Deployment needs only the student, named the way the backbone's own
library names a classifier, so that the result loads with a single standard call:

* ``torchvision:<arch>`` backbones: ``torchvision.models.get_model(arch,
  num_classes=C).load_state_dict(state_dict)`` (strict); the head becomes ``fc.*``.
* ``timm:<name>`` backbones: ``timm.create_model(name, num_classes=C)``; the head takes
  the name of that model's ``get_classifier()`` (``fc.*`` for ResNets, ``head.*`` for
  ViTs, ``head.fc.*`` for ConvNeXts).
* every other backbone (``tiny_resnet``, ``simclrv2``): mile_ssl's ``Classifier`` names
  ``backbone.*`` and ``head.*``.

The names and shapes are checked against the target model before anything is written
(:mod:`mile_ssl.commands.export_naming`), so an export never silently produces a file that fails
to load. ``model.json`` records what is needed to use the weights: architecture,
classes, preprocessing and method.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mile_ssl.atomic_files import write_text_atomically, write_with
from mile_ssl.commands.export_naming import exported_tensors, tensors_head_width
from mile_ssl.config import MULTI_LABEL_METHODS
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import read_finished_run

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "safetensors")
"""``torchvision``: a ``torch.save`` state dict (``.pth``); ``safetensors``: the same tensors."""

FILE_NAMES = {"torchvision": "model.pth", "safetensors": "model.safetensors", "json": "model.json"}
"""Names of the files an export writes in its output folder."""

EXPORT_FORMAT_VERSION = 1


def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(formats))
    unknown = [fmt for fmt in chosen if fmt not in FORMATS]
    if unknown or not chosen:
        raise ValueError(
            f"export formats must be a non-empty selection of {list(FORMATS)}, got {list(chosen)}"
        )
    return chosen


def export_checkpoint(
    run_checkpoint: str | Path,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    *,
    image_size: int | None = None,
) -> dict[str, Path]:
    """Write the fine-tuned student of a run as plain weights plus ``model.json``.

    Args:
        run_checkpoint: Lightning checkpoint of a mile_ssl run (or the run folder).
        out_dir: Folder to write ``model.pth`` / ``model.safetensors`` / ``model.json``
            into (created if needed; existing files of these names are replaced).
        formats: ``torchvision`` (a ``torch.save`` state dict, loadable with
            ``weights_only=True``) and/or ``safetensors``.
        image_size: Input size to record; default: the run's ``data.image_size`` when
            its config is in the run folder, else unknown.

    Returns:
        Path of each written file by format, plus ``json``.

    Raises:
        ValueError: Naming the file, if it is not a run checkpoint, a format is unknown
            or the student does not fit its backbone library's model.
    """
    chosen = _check_formats(formats)
    run = read_finished_run(run_checkpoint)
    source, state, metadata = run.checkpoint_path, run.state, run.metadata
    tensors, naming, load = exported_tensors(run)
    num_classes = run.num_classes
    class_names = run.class_names
    if class_names and len(class_names) != num_classes:
        raise ValueError(
            f"{source}: {len(class_names)} class names are stored for {num_classes} classes"
        )
    if image_size is None:
        image_size = run.image_size

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "torchvision" in chosen:
        path = out_dir / FILE_NAMES["torchvision"]
        write_with(path, lambda file: torch.save(tensors, file))
        written["torchvision"] = path
    if "safetensors" in chosen:
        from safetensors.torch import save

        path = out_dir / FILE_NAMES["safetensors"]
        serialised = save(
            tensors,
            metadata={
                "format": "pt",
                "naming": naming,
                "architecture": str(metadata["backbone"]["name"]),
                "num_classes": str(num_classes),
            },
        )
        write_with(path, lambda file: file.write(serialised))
        written["safetensors"] = path

    method = dict(state["method"])
    description = {
        "format_version": EXPORT_FORMAT_VERSION,
        "source_checkpoint": str(source),
        "architecture": {
            "name": metadata["backbone"]["name"],
            "kwargs": dict(metadata["backbone"].get("kwargs") or {}),
        },
        "naming": naming,
        "load": load,
        "num_classes": num_classes,
        "feature_dim": int(tensors_head_width(tensors, load)),
        "class_names": class_names,
        "preprocessing": _preprocessing(run.preprocessing, image_size),
        "method": {
            **method,
            "multi_label": method.get("name") in MULTI_LABEL_METHODS,
            "probabilities": "sigmoid" if method.get("name") in MULTI_LABEL_METHODS else "softmax",
        },
        "mile": dict(state["mile"]) if method.get("name") == "mile" else None,
        "completed_steps": int(state["completed_steps"]),
        "formats": list(written),
        "files": {fmt: path.name for fmt, path in written.items()},
        "num_tensors": len(tensors),
    }
    json_path = out_dir / FILE_NAMES["json"]
    write_text_atomically(json_path, json.dumps(description, indent=2) + "\n")
    written["json"] = json_path
    log.info("exported %s (%s names, %d tensors) to %s", source, naming, len(tensors), out_dir)
    return written


def _preprocessing(preprocessing: Preprocessing, image_size: int | None) -> dict[str, Any]:
    """What a user must do to an image before the network (see ``data.folder.eval_transform``)."""
    return {
        **preprocessing.to_dict(),
        "input_range": "RGB scaled to [0, 1], then (x - mean) / std per channel",
        "image_size": image_size,
        "resize": round(image_size / 0.875) if image_size else None,
        "crop": "center",
        "interpolation": "bilinear",
    }
