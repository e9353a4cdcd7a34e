"""Label images with a fine-tuned run: the predicted label set and the top-k classes.

The predicted set follows the evaluation (:func:`mile_ssl.metrics.predicted_sets`):
``argmax ∪ {j : sigmoid_j > threshold}`` for sigmoid and MILe models, the argmax alone
for softmax models, so what ``predict`` shows is what ReaL-F1 and coverage measured.
Images get the evaluation view (resize to ``size / 0.875``, centre crop) with the
checkpoint's normalisation.

Images get the run's training crop size (``data.image_size`` of its config) unless the
caller sets one, and are decoded by PIL: the torchvision backend's evaluation view, which
``data.backend=dali`` reproduces with its own resampling.

An input that cannot be used does not stop the others: a file that cannot be decoded,
a file named that does not exist, a broken symbolic link (named, or found in a folder)
gets a result with an ``error`` and no classes. :func:`prediction_failures` lists them;
the command line names each on stderr, apart from the table of predictions.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mile_ssl.data.augment import eval_transform
from mile_ssl.data.images import UnreadableImageError, find_inputs, load_rgb
from mile_ssl.finetune import FineTuneModule
from mile_ssl.metrics import class_probabilities, predicted_sets
from mile_ssl.runs.finished_run import read_finished_run

log = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = 224
"""Crop size when neither the caller nor the run's config gives one."""


@functools.cache
def imagenet_class_names() -> dict[str, str]:
    """Human-readable name of each ImageNet-1k wnid.

    torchvision's weight metadata lists the 1,000 category names in the order of the
    sorted wnids, which is mile_ssl's ImageNet class order; reading ``.meta`` downloads
    nothing.
    """
    from torchvision.models import ResNet50_Weights

    from mile_ssl.data.imagenet import imagenet_classes

    categories = ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    wnids = imagenet_classes()
    if len(categories) != len(wnids):
        raise ValueError(
            f"torchvision lists {len(categories)} ImageNet categories, expected {len(wnids)}"
        )
    return dict(zip(wnids, categories, strict=True))


def display_names(class_names: Sequence[str]) -> list[str]:
    """Readable names: ImageNet wnids (``n01440764``) become ``tench``; others stay as stored."""
    names = imagenet_class_names()
    return [names.get(name, name) for name in class_names]


def _entries(
    probabilities: torch.Tensor,
    indices: Iterable[int],
    class_ids: Sequence[str],
    names: Sequence[str],
) -> list[dict[str, Any]]:
    entries = [
        {
            "class_index": int(index),
            "class_name": names[int(index)],
            "class_id": class_ids[int(index)],
            "probability": float(probabilities[int(index)]),
        }
        for index in indices
    ]
    return sorted(entries, key=lambda entry: (-entry["probability"], entry["class_index"]))


def predict(
    run_checkpoint: str | Path,
    inputs: Sequence[str | Path],
    threshold: float = 0.5,
    top_k: int = 5,
    image_size: int | None = None,
    batch_size: int = 32,
    *,
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Predicted label set and top-k classes of every image, with probabilities.

    Args:
        run_checkpoint: Lightning checkpoint of a mile_ssl run (or the run folder).
        inputs: Image files and folders (searched recursively).
        threshold: Sigmoid probability above which a class joins the predicted set
            (ignored by softmax models, which predict their argmax only).
        top_k: Classes listed by probability (at most the number of classes).
        image_size: Crop size; default: the run's ``data.image_size`` if its config is
            next to the checkpoint, else 224. One that differs from the run's is used,
            and said in a warning.
        batch_size: Images per forward pass.
        device: Where the network runs.

    Returns:
        One dict per image, in input order: ``path``, ``error``, ``predicted`` (the
        predicted set) and ``top_k``, each a list of ``{"class_index", "class_name",
        "class_id", "probability"}`` sorted by decreasing probability; ``class_name``
        is human-readable (ImageNet wnids are translated), ``class_id`` the stored
        name. ``probabilities`` says whether they are sigmoid or softmax outputs.
        ``error`` is ``None``, or for a file that cannot be used why (e.g. ``empty
        file (0 bytes)``, ``no such file or folder``, ``broken symbolic link to
        ...``), with ``predicted`` and ``top_k`` empty: one bad input does not cost
        the predictions of the others (:func:`prediction_failures`).

    Raises:
        ValueError: If an argument is out of range or a folder holds no images (named).
        FileNotFoundError: If no input is there (each named): nothing to predict.
    """
    _check_arguments(threshold, top_k, image_size, batch_size)
    inputs_found = find_inputs(inputs)
    if all(missing is not None for _, missing in inputs_found):
        shown = "; ".join(f"{path}: {missing}" for path, missing in inputs_found[:5])
        more = f" and {len(inputs_found) - 5} more" if len(inputs_found) > 5 else ""
        raise FileNotFoundError(f"none of the inputs is there: {shown}{more}")
    run = read_finished_run(run_checkpoint)
    module = run.build_module()
    module.eval().to(device)
    class_ids = run.class_names
    if len(class_ids) != module.num_classes:
        class_ids = [str(index) for index in range(module.num_classes)]
    label = _Labeller(module, class_ids, display_names(class_ids), threshold, top_k, device)
    size = run.input_setting("image_size", image_size, option="--image-size")
    if run.input_setting("backend") == "dali":
        log.info("the run decoded with DALI (data.backend=dali); predict decodes with PIL")
    transform = eval_transform(size or DEFAULT_IMAGE_SIZE, run.preprocessing)

    results: dict[Path, dict[str, Any]] = {}
    pending: list[tuple[Path, torch.Tensor]] = []
    for path, missing in inputs_found:
        if missing is not None:
            results[path] = _failure(path, missing, label.kind)
            continue
        try:
            pending.append((path, transform(load_rgb(path))))
        except UnreadableImageError as error:
            results[path] = _failure(path, error.reason, label.kind)
        if len(pending) == batch_size:
            results.update(label(pending))
            pending = []
    if pending:
        results.update(label(pending))
    return [results[path] for path, _ in inputs_found]


def _check_arguments(threshold: float, top_k: int, image_size: int | None, batch_size: int) -> None:
    """Refuse an out-of-range argument before any file or checkpoint is read."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")


@dataclass
class _Labeller:
    """The predicted set and top-k classes of batches of images, by a fine-tuned module."""

    module: FineTuneModule
    class_ids: Sequence[str]
    names: Sequence[str]
    threshold: float
    top_k: int
    device: str | torch.device

    @property
    def kind(self) -> str:
        """``sigmoid`` or ``softmax``: what the probabilities are."""
        return "sigmoid" if self.module.multi_label else "softmax"

    def __call__(self, chunk: Sequence[tuple[Path, torch.Tensor]]) -> dict[Path, dict[str, Any]]:
        """The result of each image of ``chunk`` (path, evaluation view), by path."""
        multi_label = self.module.multi_label
        images = torch.stack([image for _, image in chunk]).to(self.device)
        with torch.inference_mode():
            logits = self.module(images).float().cpu()
        probabilities = class_probabilities(logits, multi_label)
        sets = predicted_sets(logits, self.threshold, multi_label)
        top = probabilities.topk(min(self.top_k, self.module.num_classes), dim=1).indices
        return {
            path: {
                "path": str(path),
                "error": None,
                "predicted": self._entries(
                    probabilities[row], torch.nonzero(sets[row]).flatten().tolist()
                ),
                "top_k": self._entries(probabilities[row], top[row].tolist()),
                "probabilities": self.kind,
            }
            for row, (path, _) in enumerate(chunk)
        }

    def _entries(self, probabilities: torch.Tensor, indices: Iterable[int]) -> list[dict[str, Any]]:
        return _entries(probabilities, indices, self.class_ids, self.names)


def _failure(path: Path, reason: str, kind: str) -> dict[str, Any]:
    """The result of an input that cannot be decoded: why, and no classes."""
    return {"path": str(path), "error": reason, "predicted": [], "top_k": [], "probabilities": kind}


def prediction_failures(results: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """``(path, reason)`` of every input of :func:`predict` that could not be decoded.

    The command line prints them and exits non-zero when there are any.
    """
    return [(result["path"], result["error"]) for result in results if result.get("error")]


def _describe(entries: Sequence[dict[str, Any]]) -> str:
    return ", ".join(
        f"{entry['class_name']} {100 * entry['probability']:.1f}%" for entry in entries
    )


def format_predictions(results: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table: one row per image with its predicted set and its top-k classes.

    Inputs that could not be used are no rows: :func:`prediction_failures` lists them, and
    the command line names them on stderr.
    """
    predicted = [result for result in results if not result.get("error")]
    if not predicted:
        return "no predictions"
    k = max(len(result["top_k"]) for result in predicted)
    rows = [("image", "predicted set", f"top-{k}")]
    rows += [
        (result["path"], _describe(result["predicted"]), _describe(result["top_k"]))
        for result in predicted
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip() for row in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)
