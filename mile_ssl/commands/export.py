"""Export the fine-tuned student of a run for use without mile_ssl.

A run checkpoint holds the whole Lightning state: student, teacher, optimiser state and
the MILe schedule. Deployment needs only the student, named the way the backbone's own
library names a classifier, so that the result loads with a single standard call:

* ``torchvision:<arch>`` backbones, and SimCLR-v2's ResNets without selective kernels at
  width 1: ``torchvision.models.get_model(arch, num_classes=C).load_state_dict(state_dict)``
  (strict); the head becomes ``fc.*``.
* ``timm:<name>`` backbones: ``timm.create_model(name, num_classes=C)``; the head takes
  the name of that model's ``get_classifier()`` (``fc.*`` for ResNets, ``head.*`` for
  ViTs, ``head.fc.*`` for ConvNeXts).
* SimCLR-v2's other ResNets (selective kernels, wider, projection-head layers): its
  ``SimCLRv2ResNet`` (``backbone.*``) and a linear ``head.*``; the export writes the
  network's definition, a torch-only ``simclrv2_resnet.py``, beside the weights.
* every other backbone (``tiny_resnet``): mile_ssl's ``Classifier`` names ``backbone.*``
  and ``head.*``.

The names and shapes are checked against the target model before anything is written
(:mod:`mile_ssl.commands.export_naming`), so an export never silently produces a file that fails
to load. ``model.json`` records what is needed to use the weights: architecture,
classes, preprocessing, method, and in ``load.code`` a Python program that builds the
model and loads the weights, runnable as written.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from mile_ssl.atomic_files import write_text_atomically, write_with
from mile_ssl.commands.export_naming import (
    ExportedNetwork,
    exported_network,
    tensors_head_width,
)
from mile_ssl.config import MULTI_LABEL_METHODS
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import FinishedRun, read_finished_run

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
            (and for SimCLR-v2's own ResNets ``simclrv2_resnet.py``) into (created if
            needed; existing files of these names are replaced).
        formats: ``torchvision`` (a ``torch.save`` state dict, loadable with
            ``weights_only=True``) and/or ``safetensors``.
        image_size: Input size to record; default: the run's ``data.image_size`` when
            its config is in the run folder, else unknown. One that differs from the
            run's is recorded, and said in a warning.

    Returns:
        Path of each written file by format, plus ``json``.

    Raises:
        ValueError: Naming the file, if it is not a run checkpoint, a format is unknown
            or the student does not fit its backbone library's model; naming ``--out``
            and the folder if it cannot be made or written.
    """
    chosen = _check_formats(formats)
    out_dir = Path(out_dir)
    _refuse_non_folder(out_dir)
    run = read_finished_run(run_checkpoint)
    source = run.checkpoint_path
    network = exported_network(run)
    if run.class_names and len(run.class_names) != run.num_classes:
        raise ValueError(
            f"{source}: {len(run.class_names)} class names are stored for {run.num_classes} classes"
        )
    image_size = run.input_setting("image_size", image_size, option="--image-size")
    description = _description(run, network, image_size)
    made = [path for path in (*reversed(out_dir.parents), out_dir) if not path.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = _write_files(network, out_dir, chosen, description)
    except OSError as error:
        if made:  # the folders this export made hold nothing else
            shutil.rmtree(made[0], ignore_errors=True)
        raise ValueError(
            f"--out {out_dir}: cannot write the export there: {error.strerror or error}"
        ) from error
    log.info(
        "exported %s (%s names, %d tensors) to %s",
        source,
        network.naming,
        len(network.tensors),
        out_dir,
    )
    return written


def _refuse_non_folder(out_dir: Path) -> None:
    """Refuse an ``--out`` that is, or lies below, something other than a folder."""
    not_folder = next(
        (path for path in (out_dir, *out_dir.parents) if path.exists() and not path.is_dir()),
        None,
    )
    if not_folder is not None:
        where = "" if not_folder == out_dir else f" ({not_folder} is a file)"
        raise ValueError(f"--out {out_dir}: is not a folder{where}; name a folder")


def _write_files(
    network: ExportedNetwork, out_dir: Path, chosen: Sequence[str], description: dict[str, Any]
) -> dict[str, Path]:
    """Write the weights, the network's definition if any, and ``model.json``."""
    tensors = network.tensors
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
                "naming": network.naming,
                "architecture": str(description["architecture"]["name"]),
                "num_classes": str(description["num_classes"]),
            },
        )
        write_with(path, lambda file: file.write(serialised))
        written["safetensors"] = path
    for name, text in network.files.items():
        written["definition"] = write_text_atomically(out_dir / name, text)
    description["load"] = {
        **network.load,
        "model": _program(network, out_dir),
        "code": _program(network, out_dir, written),
    }
    description["formats"] = [fmt for fmt in FORMATS if fmt in written]
    description["files"] = {key: path.name for key, path in written.items()}
    json_path = out_dir / FILE_NAMES["json"]
    write_text_atomically(json_path, json.dumps(description, indent=2) + "\n")
    written["json"] = json_path
    return written


def _program(network: ExportedNetwork, folder: Path, weights: dict[str, Path] | None = None) -> str:
    """Python that builds ``model`` (and with ``weights``, loads them): it runs as written.

    It reads the files from ``folder`` (absolute); after moving the export, change the
    ``folder = ...`` line.
    """
    imports = list(network.imports)
    body = list(network.build)
    if weights is not None:
        if "torchvision" in weights:
            imports.append("import torch")
            state = (
                f"torch.load(folder / {weights['torchvision'].name!r}, map_location='cpu', "
                "weights_only=True)"
            )
        else:
            imports.append("from safetensors.torch import load_file")
            state = f"load_file(folder / {weights['safetensors'].name!r})"
        body += [f"model.load_state_dict({state}, strict={network.load['strict']})", "model.eval()"]
    if any("folder" in line for line in body):
        imports.insert(0, "from pathlib import Path")
        body.insert(0, f"folder = Path({str(folder.resolve())!r})  # this export's folder")
    return "\n".join([*dict.fromkeys(imports), "", *body]) + "\n"


def _description(
    run: FinishedRun, network: ExportedNetwork, image_size: int | None
) -> dict[str, Any]:
    """``model.json`` but for what writing decides (``load``, ``formats``, ``files``)."""
    state, metadata = run.state, run.metadata
    method = dict(state["method"])
    multi_label = method.get("name") in MULTI_LABEL_METHODS
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "source_checkpoint": str(run.checkpoint_path),
        "architecture": {
            "name": metadata["backbone"]["name"],
            "kwargs": dict(metadata["backbone"].get("kwargs") or {}),
        },
        "naming": network.naming,
        "num_classes": run.num_classes,
        "feature_dim": int(tensors_head_width(network.tensors, network.load)),
        "class_names": run.class_names,
        "preprocessing": _preprocessing(run.preprocessing, image_size),
        "method": {
            **method,
            "multi_label": multi_label,
            "probabilities": "sigmoid" if multi_label else "softmax",
        },
        "mile": dict(state["mile"]) if method.get("name") == "mile" else None,
        "completed_steps": int(state["completed_steps"]),
        "num_tensors": len(network.tensors),
    }


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
