"""Describing checkpoints and mismatches, for error messages a person can act on.

When a file is not recognised, or its tensors do not fit the backbone, the error must
show what the file holds at the level a person compares it with a format's layout:
key groups (:func:`group_keys`), the kinds of top-level entries
(:func:`describe_contents`), which keys are missing, unexpected or of another shape
(:func:`describe_mismatch`), and which tensors hold NaN or infinity
(:func:`non_finite_tensors`). The checks built on them (:func:`check_state_dict`,
:func:`check_finite`) raise with these descriptions; the loader decides when to run them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mile_ssl.networks.backbones import BackboneSpec

from .errors import SHOWN, CheckpointMismatchError, NonFiniteWeightsError
from .state_dicts import DEFAULT_CONTAINER_KEYS, is_tensor_dict, unwrap


def group_keys(keys: Iterable[str]) -> dict[str, int]:
    """Count dotted keys per module group, at the depth where they branch.

    A chain of single modules is followed down (``module.encoder_q.`` rather than
    ``module.``), the modules where it branches become the groups, and a module that
    holds tensors directly or only numbered children (``fc.``, ``projection_head.`` of
    an ``nn.Sequential``) is never split further. A MoCo state dict thus reads
    ``{"module.encoder_q.": 320, "module.encoder_k.": 320, "module.queue": 1, ...}``
    and a ResNet ``{"conv1.": 1, "bn1.": 5, "layer1.": 30, ...}``: the level at which a
    person compares a file with a format's layout. Module groups end with ``"."``;
    single tensors are named in full.

    Args:
        keys: State-dict keys.

    Returns:
        Group name to number of keys, in first-seen order.
    """
    tails = [key.split(".") for key in keys]
    groups: dict[str, int] = {}
    if tails:
        _group_tails([], tails, groups, split=True)
    return groups


def _group_tails(
    path: list[str], tails: list[list[str]], groups: dict[str, int], *, split: bool
) -> None:
    children: dict[str, list[list[str]]] = {}
    for tail in tails:
        children.setdefault(tail[0], []).append(tail[1:])
    holds_tensors = all(not rest for rests in children.values() for rest in rests)
    if path and (holds_tensors or all(name.isdigit() for name in children)):
        _count(groups, ".".join(path) + ".", len(tails))
        return
    if len(children) == 1:
        (name, rest), *_ = children.items()
        if all(rest):
            _group_tails([*path, name], rest, groups, split=split)
            return
    if not split:
        _count(groups, ".".join(path) + ".", len(tails))
        return
    for name, rest in children.items():
        inner = [tail for tail in rest if tail]
        if inner:
            _group_tails([*path, name], inner, groups, split=False)
        if len(inner) < len(rest):
            _count(groups, ".".join([*path, name]), len(rest) - len(inner))


def _count(groups: dict[str, int], label: str, count: int) -> None:
    groups[label] = groups.get(label, 0) + count


def describe_contents(raw: Mapping[str, Any]) -> str:
    """Summarise what a checkpoint mapping holds, for errors about unrecognised files.

    Names the top-level keys with the kind of value each holds, then, for every
    top-level mapping of tensors (``state_dict``, DINO's ``teacher``, ...) and for the
    state dict :func:`unwrap` finds deeper, its size, first keys and key groups
    (:func:`group_keys`): what a person compares with a format's layout.
    """
    if not raw:
        return "the file holds an empty mapping (no keys at all)"
    if is_tensor_dict(raw):
        return _describe_state_dict("a plain state dict", raw)
    lines = [
        "top-level keys: "
        + ", ".join(f"{key!r} ({_kind(value)})" for key, value in list(raw.items())[: SHOWN * 2])
        + (f", ... ({len(raw)} in all)" if len(raw) > SHOWN * 2 else "")
    ]
    nested = {key: value for key, value in raw.items() if is_tensor_dict(value)}
    try:
        found: dict[str, Tensor] | None = unwrap(raw)
    except ValueError:
        found = None
    if found is not None and not any(found.keys() == value.keys() for value in nested.values()):
        lines.append(_describe_state_dict("nested state dict", found))
    lines += [
        _describe_state_dict(f"state dict under {key!r}", value) for key, value in nested.items()
    ]
    if found is None and not nested:
        lines.append(f"no state dict found directly or under {list(DEFAULT_CONTAINER_KEYS)}")
    return "\n  ".join(lines)


def _describe_state_dict(title: str, state_dict: Mapping[str, Tensor]) -> str:
    groups = list(group_keys(state_dict).items())
    shown = ", ".join(f"{name!r}: {count}" for name, count in groups[: SHOWN * 2])
    more = f", ... ({len(groups)} groups)" if len(groups) > SHOWN * 2 else ""
    return (
        f"{title}: {len(state_dict)} tensors, first keys {list(state_dict)[:SHOWN]}, "
        f"key groups {{{shown}{more}}}"
    )


def _kind(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"tensor {list(value.shape)}"
    if isinstance(value, Mapping):
        return f"mapping of {len(value)}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def describe_mismatch(
    expected: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]
) -> list[str]:
    """List how ``state_dict`` differs from a module's ``expected`` state dict.

    Missing BatchNorm ``num_batches_tracked`` counters are tolerated when the layer's
    ``running_mean`` is present: files saved before PyTorch 0.4.1 lack them and
    ``load_state_dict`` refills them itself. Everything else must match exactly.

    Args:
        expected: The target module's ``state_dict()``.
        state_dict: The tensors to load.

    Returns:
        One line per kind of problem (missing, unexpected, wrong shape), each with the
        count and the first few keys; empty when the two match.
    """
    missing = [
        key
        for key in expected
        if key not in state_dict and not _legacy_batchnorm_counter(key, state_dict)
    ]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {list(state_dict[key].shape)} vs backbone {list(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and state_dict[key].shape != value.shape
    ]
    lines = []
    for kind, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches", wrong_shape),
    ):
        if items:
            shown = f"first {SHOWN}: " if len(items) > SHOWN else ""
            lines.append(f"{len(items)} {kind} ({shown}{items[:SHOWN]})")
    return lines


def _legacy_batchnorm_counter(key: str, state_dict: Mapping[str, Tensor]) -> bool:
    suffix = ".num_batches_tracked"
    return key.endswith(suffix) and key[: -len(suffix)] + ".running_mean" in state_dict


def describe_source(source: Path, adapter: str, expected_prefix: str | None) -> str:
    """Name a file with the adapter that read it and where the backbone was taken from."""
    taken_from = f", backbone taken from keys under {expected_prefix!r}" if expected_prefix else ""
    return f"{source} (adapter {adapter!r}{taken_from})"


def describe_spec(spec: BackboneSpec) -> str:
    """Name an architecture with its builder arguments, as errors quote it."""
    return f"{spec.name!r} with {spec.kwargs}" if spec.kwargs else repr(spec.name)


def check_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    source: Path,
    adapter: str,
    spec: BackboneSpec,
    expected_prefix: str | None = None,
) -> None:
    """Refuse ``state_dict`` unless it fits ``module`` exactly, before anything is loaded.

    torch's strict loading reports differences without the file, the adapter or the
    part of the file that was compared; this error names them all, with every kind of
    difference (:func:`describe_mismatch`), so that a wrong backbone or adapter shows.

    Raises:
        CheckpointMismatchError: If any key is missing, unexpected or of another shape.
    """
    problems = describe_mismatch(module.state_dict(), state_dict)
    if problems:
        raise CheckpointMismatchError(
            "\n  ".join(
                [
                    f"{describe_source(source, adapter, expected_prefix)} does not match "
                    f"backbone {describe_spec(spec)}:"
                ]
                + problems
                + ["check backbone.name and the adapter; nothing was loaded"]
            )
        )


def non_finite_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, int]:
    """The floating-point tensors holding NaN or infinity, with how many such values each.

    Run on every loaded file and before every checkpoint save, so it must cost little
    next to reading or writing the file: one sum per tensor (a NaN or an infinity makes
    the sum non-finite) and one read of the device; only a tensor whose sum is not
    finite (also a finite one whose sum overflows) is counted element by element.

    Returns:
        Key to count of non-finite values, in the state dict's order; empty when all
        values are finite.
    """
    tensors = [(key, value) for key, value in state_dict.items() if value.is_floating_point()]
    if not tensors:
        return {}
    sums = [value.detach().sum().float() for _, value in tensors]
    finite = torch.isfinite(torch.stack([total.to(sums[0].device) for total in sums]))
    found = {}
    for index in torch.nonzero(~finite).flatten().tolist():
        key, value = tensors[index]
        count = int(value.numel() - torch.isfinite(value).sum())
        if count:
            found[key] = count
    return found


def check_finite(
    state_dict: Mapping[str, Tensor],
    *,
    source: Path,
    adapter: str,
    expected_prefix: str | None = None,
) -> None:
    """Refuse a backbone whose tensors hold NaN or infinity, naming the file and the first.

    Such a file was saved after its training diverged, or is damaged. Fine-tuning from
    it diverges at the first step, and the error then blames the learning rate, not
    the file; here it names the file and the tensor.

    Raises:
        NonFiniteWeightsError: If any floating-point tensor has a non-finite value.
    """
    found = non_finite_tensors(state_dict)
    if not found:
        return
    first, count = next(iter(found.items()))
    in_all = f" ({len(found)} tensors in all)" if len(found) > 1 else ""
    raise NonFiniteWeightsError(
        f"{describe_source(source, adapter, expected_prefix)} holds non-finite weights: "
        f"tensor {first!r} is NaN or infinite in {count} of its {state_dict[first].numel()} "
        f"values{in_all}. The file was saved after training diverged or is damaged; "
        "fine-tuning from it cannot work (mile-ssl inspect lists every such tensor); "
        "nothing was loaded"
    )
