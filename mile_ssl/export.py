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

The names and shapes are checked against the target model (built on the ``meta``
device, so no memory or time is spent on weights) before anything is written, so an
export never silently produces a file that fails to load. ``model.json`` records what
is needed to use the weights: architecture, classes, preprocessing and method.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.adapters.reading import resolve_checkpoint_path
from mile_ssl.backbones import TORCHVISION_BUILD_OPTIONS, BackboneSpec, build_backbone
from mile_ssl.config import MULTI_LABEL_METHODS
from mile_ssl.evaluate import read_run_checkpoint
from mile_ssl.method import CHECKPOINT_KEY

log = logging.getLogger(__name__)

FORMATS = ("torchvision", "safetensors")
"""``torchvision``: a ``torch.save`` state dict (``.pth``); ``safetensors``: the same tensors."""

FILE_NAMES = {"torchvision": "model.pth", "safetensors": "model.safetensors", "json": "model.json"}
"""Names of the files an export writes in its output folder."""

STUDENT_PREFIX = "student."
"""Where the kept network sits in a :class:`~mile_ssl.method.MILeModule` state dict."""

EXPORT_FORMAT_VERSION = 1


_HYDRA_CONFIG = Path(".hydra") / "config.yaml"


def resolve_run_checkpoint(path: str | Path) -> Path:
    """The run checkpoint that ``path`` designates: a file, a run folder or its ``checkpoints/``.

    Raises:
        FileNotFoundError: If nothing exists at ``path``.
    """
    path = Path(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    return resolve_checkpoint_path(path)


def run_image_size(checkpoint_path: str | Path) -> int | None:
    """Training image size of the run that wrote ``checkpoint_path``, if its config is there.

    ``mile-ssl train`` keeps the resolved config in ``<run>/.hydra/config.yaml`` next to
    ``<run>/checkpoints/``; the checkpoint itself does not record the image size.
    Digit-grid runs have a fixed 24 x 24 input, so they report none.
    """
    import yaml

    checkpoint_path = Path(checkpoint_path)
    for run_dir in (checkpoint_path.parent.parent, checkpoint_path.parent):
        config_file = run_dir / _HYDRA_CONFIG
        if not config_file.is_file():
            continue
        try:
            config = yaml.safe_load(config_file.read_text())
        except yaml.YAMLError as error:
            log.warning("cannot read the run config %s: %s", config_file, error)
            return None
        data = config.get("data", {}) if isinstance(config, dict) else {}
        if not isinstance(data, dict) or data.get("name") == "digits":
            return None
        size = data.get("image_size")
        return int(size) if isinstance(size, int) else None
    return None


def student_state_dict(checkpoint: Mapping[str, Any], source: str | Path) -> dict[str, Tensor]:
    """The student's tensors (``backbone.*``, ``head.*``) of a run checkpoint, contiguous.

    The teacher is left out: it is a training device of MILe, not part of the result.
    Tensors are copied into the standard contiguous layout because networks train in
    channels-last format, which safetensors and many loaders do not expect.

    Raises:
        ValueError: Naming ``source`` if there is no student head or backbone.
    """
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        raise ValueError(f"{source}: the checkpoint has no 'state_dict'")
    student = {
        key[len(STUDENT_PREFIX) :]: value.detach()
        .to("cpu")
        .clone(memory_format=torch.contiguous_format)
        for key, value in state.items()
        if key.startswith(STUDENT_PREFIX)
    }
    for required in ("head.weight", "head.bias"):
        if required not in student:
            raise ValueError(f"{source}: the checkpoint's student has no {required!r}")
    if not any(key.startswith("backbone.") for key in student):
        raise ValueError(f"{source}: the checkpoint's student has no 'backbone.*' tensors")
    return student


def _split(student: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    backbone = {
        key[len("backbone.") :]: value
        for key, value in student.items()
        if key.startswith("backbone.")
    }
    return backbone, student["head.weight"], student["head.bias"]


def _meta_model(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model on the ``meta`` device when it allows it (names and shapes only)."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        return build()


def _module_name(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise ValueError(f"the classifier {type(target).__name__} is not a submodule of the model")


def _torchvision_reference(arch: str, kwargs: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The backbone exactly as mile_ssl builds it (stem options included), with a head."""

    def build() -> nn.Module:
        model, feature_dim = build_backbone(BackboneSpec(f"torchvision:{arch}", dict(kwargs)))
        model.fc = nn.Linear(feature_dim, num_classes)
        return model

    return _meta_model(build)


def _timm_reference(name: str, kwargs: Mapping[str, Any], num_classes: int) -> nn.Module:
    import timm

    return _meta_model(
        lambda: timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    )


def _check_against(
    tensors: Mapping[str, Tensor], reference: nn.Module, target: str, source: str | Path
) -> None:
    """Fail, naming the first offending keys, unless ``tensors`` load strictly into it."""
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(tensors) if tuple(tensors[key].shape) != expected[key]
    )
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}")
        if mismatched:
            key = mismatched[0]
            details.append(
                f"{len(mismatched)} of other shape, e.g. {key!r}: "
                f"{tuple(tensors[key].shape)} vs {expected[key]}"
            )
        raise ValueError(
            f"{source}: the student cannot be exported as {target}: " + "; ".join(details)
        )


def _torchvision_tensors(
    arch: str,
    kwargs: Mapping[str, Any],
    student: Mapping[str, Tensor],
    source: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    backbone, weight, bias = _split(student)
    tensors = {**backbone, "fc.weight": weight, "fc.bias": bias}
    num_classes = int(weight.shape[0])
    _check_against(
        tensors,
        _torchvision_reference(arch, kwargs, num_classes),
        f"torchvision:{arch}",
        source,
    )
    constructor = {k: v for k, v in kwargs.items() if k not in TORCHVISION_BUILD_OPTIONS}
    arguments = ", ".join(
        [repr(arch), "weights=None", f"num_classes={num_classes}"]
        + [f"{key}={value!r}" for key, value in constructor.items()]
    )
    load: dict[str, Any] = {
        "library": "torchvision",
        "model": f"torchvision.models.get_model({arguments})",
        "strict": True,
        "head": "fc",
        "identical_outputs": True,
    }
    notes = []
    if kwargs.get("cifar_stem"):
        load["strict"] = False
        notes.append(
            "replace conv1 by a 3x3 stride-1 convolution (no bias, padding "
            f"{kwargs.get('cifar_stem_padding', 1)}) and maxpool by Identity before loading "
            "(CIFAR stem)"
        )
    if kwargs.get("tf_same_padding"):
        notes.append(
            "the weights were trained with TensorFlow 'SAME' padding: apply "
            "mile_ssl.tf_padding.use_tf_same_padding(model) to reproduce the outputs; "
            "the stock model loads them but computes slightly different features"
        )
    if notes:
        load["identical_outputs"] = False
        load["note"] = "; ".join(notes)
    return tensors, load


def _timm_tensors(
    name: str,
    kwargs: Mapping[str, Any],
    student: Mapping[str, Tensor],
    source: str | Path,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    backbone, weight, bias = _split(student)
    num_classes = int(weight.shape[0])
    reference = _timm_reference(name, kwargs, num_classes)
    classifier = reference.get_classifier()  # type: ignore[operator]
    if not isinstance(classifier, nn.Module) or not any(True for _ in classifier.parameters()):
        raise ValueError(
            f"{source}: timm:{name} has no classifier with parameters to hold the head"
        )
    prefix = _module_name(reference, classifier)
    head_weight = reference.state_dict()[f"{prefix}.weight"]
    if tuple(head_weight.shape) != tuple(weight.shape) and head_weight.numel() == weight.numel():
        weight = weight.reshape(head_weight.shape)  # e.g. a 1x1-convolution classifier
    tensors = {**backbone, f"{prefix}.weight": weight, f"{prefix}.bias": bias}
    _check_against(tensors, reference, f"timm:{name}", source)
    arguments = ", ".join(
        [repr(name), "pretrained=False", f"num_classes={num_classes}"]
        + [f"{key}={value!r}" for key, value in kwargs.items()]
    )
    load = {
        "library": "timm",
        "model": f"timm.create_model({arguments})",
        "strict": True,
        "head": prefix,
        "identical_outputs": True,
    }
    return tensors, load


def _mile_ssl_load(name: str, kwargs: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    return {
        "library": "mile_ssl",
        "model": (
            "mile_ssl.method.Classifier(*mile_ssl.backbones.build_backbone("
            f"BackboneSpec({name!r}, {dict(kwargs)!r})), num_classes={num_classes})"
        ),
        "strict": True,
        "head": "head",
        "identical_outputs": True,
    }


def exported_tensors(
    checkpoint: Mapping[str, Any], source: str | Path = "checkpoint"
) -> tuple[dict[str, Tensor], str, dict[str, Any]]:
    """The student named for its backbone's library, the naming used, and how to load it.

    Args:
        checkpoint: A run checkpoint as :func:`~mile_ssl.evaluate.read_run_checkpoint`
            returns it.
        source: Where it came from, for error messages.

    Returns:
        ``(tensors, naming, load)``: ``naming`` is ``torchvision``, ``timm`` or
        ``mile_ssl``; ``load`` describes the model to load the tensors into.

    Raises:
        ValueError: Naming ``source`` if the tensors do not fit the target model.
    """
    metadata = checkpoint[CHECKPOINT_KEY]["metadata"]
    backbone = metadata.get("backbone") or {}
    name = backbone.get("name")
    kwargs = dict(backbone.get("kwargs") or {})
    if not isinstance(name, str):
        raise ValueError(f"{source}: the checkpoint's metadata does not name its backbone")
    student = student_state_dict(checkpoint, source)
    family, _, arch = name.partition(":")
    if family == "torchvision" and arch:
        tensors, load = _torchvision_tensors(arch, kwargs, student, source)
        return tensors, "torchvision", load
    if family == "timm" and arch:
        tensors, load = _timm_tensors(arch, kwargs, student, source)
        return tensors, "timm", load
    num_classes = int(student["head.weight"].shape[0])
    return dict(student), "mile_ssl", _mile_ssl_load(name, kwargs, num_classes)


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
            its ``.hydra/config.yaml`` is next to the checkpoint folder, else unknown.

    Returns:
        Path of each written file by format, plus ``json``.

    Raises:
        ValueError: Naming the file, if it is not a run checkpoint, a format is unknown
            or the student does not fit its backbone library's model.
    """
    chosen = _check_formats(formats)
    source = resolve_run_checkpoint(run_checkpoint)
    checkpoint = read_run_checkpoint(source)
    tensors, naming, load = exported_tensors(checkpoint, source)
    state = checkpoint[CHECKPOINT_KEY]
    metadata = state["metadata"]
    num_classes = int(state["num_classes"])
    class_names = list(metadata.get("class_names") or [])
    if class_names and len(class_names) != num_classes:
        raise ValueError(
            f"{source}: {len(class_names)} class names are stored for {num_classes} classes"
        )
    if image_size is None:
        image_size = run_image_size(source)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "torchvision" in chosen:
        path = out_dir / FILE_NAMES["torchvision"]
        torch.save(tensors, path)
        written["torchvision"] = path
    if "safetensors" in chosen:
        from safetensors.torch import save_file

        path = out_dir / FILE_NAMES["safetensors"]
        save_file(
            tensors,
            str(path),
            metadata={
                "format": "pt",
                "naming": naming,
                "architecture": str(metadata["backbone"]["name"]),
                "num_classes": str(num_classes),
            },
        )
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
        "preprocessing": _preprocessing(metadata.get("preprocessing") or {}, image_size),
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
    json_path.write_text(json.dumps(description, indent=2) + "\n")
    written["json"] = json_path
    log.info("exported %s (%s names, %d tensors) to %s", source, naming, len(tensors), out_dir)
    return written


def tensors_head_width(tensors: Mapping[str, Tensor], load: Mapping[str, Any]) -> int:
    """Input width of the exported classifier (the backbone's feature width)."""
    weight = tensors[f"{load['head']}.weight"]
    return int(weight.reshape(weight.shape[0], -1).shape[1])


def _preprocessing(stored: Mapping[str, Any], image_size: int | None) -> dict[str, Any]:
    """What a user must do to an image before the network (see ``data.folder.eval_transform``)."""
    from mile_ssl.preprocessing import Preprocessing

    preprocessing = Preprocessing.from_dict(dict(stored)) if stored else Preprocessing()
    return {
        **preprocessing.to_dict(),
        "input_range": "RGB scaled to [0, 1], then (x - mean) / std per channel",
        "image_size": image_size,
        "resize": round(image_size / 0.875) if image_size else None,
        "crop": "center",
        "interpolation": "bilinear",
    }
