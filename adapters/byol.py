"""DeepMind's official BYOL checkpoints (deepmind-research/byol), read without running them.

BYOL (Grill et al., 2020, "Bootstrap Your Own Latent") was released as JAX/Haiku code
whose checkpoints (``pretrain_res50x1.pkl``, ``pretrain_res200x2.pkl`` and the ablation
files) are ``dill`` pickles of ``{"step", "rng", "experiment_state"}``, where the
experiment state is a ``_ByolExperimentState`` namedtuple of ``online_params``,
``target_params``, ``online_state``, ``target_state`` and ``opt_state``
(``byol/byol_experiment.py``). Parameters map Haiku module names
(``res_net50/~/block_group_0/~/block_0/~/conv_0``) to ``{"w" | "b" | "scale" |
"offset": array}``; the BatchNorm state maps ``<batchnorm>/~/mean_ema`` and
``/~/var_ema`` to ``{"average", "hidden", "counter"}``.

Reading: unpickling such a file normally imports ``byol``, ``haiku``, ``optax`` and
``dill`` and may call anything the file names. The ``.pkl`` reader
(:func:`~.reading.read_pickle`) instead rebuilds only numpy arrays (as tensors) and
builtin containers, and turns every other class or function the pickle names into an
inert :class:`~.safe_pickle.PickledObject`, so nothing from the file is executed. This
module teaches it the field names of BYOL's experiment-state namedtuples.

Converting: the online encoder is kept, because BYOL evaluates (linear evaluation,
fine-tuning) the online network and discards the target one. The projector, predictor,
the online linear classifier, the target network and the optimiser state are dropped and
listed in ``dropped``. Haiku's ResNet v1 maps onto torchvision's ResNet-50/101/152 name
for name (kernels HWIO -> OIHW, BatchNorm ``scale``/``offset`` and EMA ``average`` ->
weight/bias/running stats; BYOL's BatchNorm uses ``eps=1e-5`` like torchvision), but
Haiku convolutions and max-pooling use TF "SAME" padding, so the backbone is built with
``tf_same_padding=True`` (:mod:`mile_ssl.networks.tf_padding`). To convert the target network
instead, call :func:`convert_haiku_resnet` on ``experiment_state.target_params`` and
``target_state``.

BYOL feeds the network images in [0, 1] normalised with the ImageNet mean and standard
deviation (``normalize_images`` in ``byol/utils/dataset.py``), which is
:class:`~mile_ssl.networks.preprocessing.Preprocessing`'s default.

ResNet-200 (x2) and the other wide ablation networks have no torchvision counterpart and
are refused with the architecture found. BYOL weights already converted to torchvision
names (plain ``.pth`` state dicts) are handled by the ``torchvision`` adapter; those
conversions target symmetric PyTorch padding and are loaded without "SAME" padding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mile_ssl.networks.backbones import BackboneSpec
from mile_ssl.networks.preprocessing import Preprocessing

from .conversion import AdapterOptions, ConvertedCheckpoint
from .haiku_resnet import HaikuResNet, convert_haiku_resnet
from .registry import register_adapter
from .safe_pickle import PickledObject, describe_pickled, register_namedtuple_fields

__all__ = [
    "HaikuResNet",
    "convert_byol",
    "convert_haiku_resnet",
    "detect_byol",
]

EXPERIMENT_STATE_KEY = "experiment_state"
"""Top-level key of BYOL's checkpoints (``byol/utils/checkpointing.py``)."""

NETWORK_FIELDS: tuple[tuple[str, str], ...] = (
    ("online_params", "online_state"),
    ("backbone_params", "backbone_state"),
)
"""Experiment-state fields holding the encoder: BYOL pre-training keeps the online network
in ``online_*`` (``_ByolExperimentState``), BYOL's linear evaluation in ``backbone_*``
(``_EvalExperimentState``)."""

EXPERIMENT_STATE_FIELDS: dict[str, tuple[str, ...]] = {
    "_ByolExperimentState": (
        "online_params",
        "target_params",
        "online_state",
        "target_state",
        "opt_state",
    ),
    "_EvalExperimentState": (
        "backbone_params",
        "classif_params",
        "backbone_state",
        "backbone_opt_state",
        "classif_opt_state",
    ),
}
"""Field order of BYOL's experiment-state namedtuples (``byol_experiment.py`` and
``eval_experiment.py``). A namedtuple pickled by reference records only its class name
and positional values, so the names must come from here."""

for _name, _fields in EXPERIMENT_STATE_FIELDS.items():
    register_namedtuple_fields(_name, _fields)


def _field(container: Any, name: str) -> Any:
    if isinstance(container, Mapping):
        return container.get(name)
    return getattr(container, name, None)


def _field_names(container: Any) -> tuple[str, ...]:
    if isinstance(container, Mapping):
        return tuple(str(key) for key in container)
    if isinstance(container, PickledObject):
        return type(container).pickled_fields
    return tuple(getattr(container, "_fields", ()))


_TORCHVISION_RESNETS: dict[tuple[int, ...], str] = {
    (3, 4, 6, 3): "resnet50",
    (3, 4, 23, 3): "resnet101",
    (3, 8, 36, 3): "resnet152",
}
"""Bottleneck ResNets of width x1 that torchvision builds, by blocks per group."""


def _torchvision_spec(architecture: HaikuResNet) -> BackboneSpec:
    arch = _TORCHVISION_RESNETS.get(architecture.blocks_per_group)
    if not architecture.bottleneck or architecture.width != 1 or arch is None:
        raise ValueError(
            f"this BYOL checkpoint holds a {architecture}, which torchvision does not "
            "provide (supported: ResNet-50, -101 and -152 of width x1, e.g. "
            "pretrain_res50x1.pkl). BYOL's ResNet-200 x2 and wider ablation networks "
            "cannot be loaded"
        )
    return BackboneSpec(f"torchvision:{arch}", {"tf_same_padding": True})


def detect_byol(raw: Mapping[str, Any]) -> bool:
    """Whether ``raw`` is a BYOL checkpoint: it has a top-level ``experiment_state``."""
    return EXPERIMENT_STATE_KEY in raw and "format" not in raw


@register_adapter("byol", detect=detect_byol)
def convert_byol(raw: Mapping[str, Any], options: AdapterOptions) -> ConvertedCheckpoint:
    """Extract the online ResNet encoder of an official BYOL checkpoint.

    Args:
        raw: The checkpoint mapping, as :func:`~.reading.read_pickle` returns it.
        options: Conversion options; BYOL's projector is not offered as part of the
            backbone, so ``projection_layers`` must be 0.

    Returns:
        The encoder's tensors named as in torchvision's ResNet, the architecture
        (``torchvision:resnet50`` with TF "SAME" padding for ``pretrain_res50x1.pkl``),
        ImageNet preprocessing, and everything else in ``dropped``: the heads, the target
        network, the optimiser state and the other top-level entries.

    Raises:
        ValueError: If the experiment state holds no encoder, the encoder is not a Haiku
            ResNet v1, or torchvision has no matching model (e.g. ResNet-200 x2).
    """
    if options.projection_layers:
        raise ValueError(
            f"checkpoint.projection_layers={options.projection_layers} is not supported by "
            "the 'byol' adapter: BYOL's projector is dropped and fine-tuning starts from "
            "the encoder's pooled features"
        )
    experiment_state = raw[EXPERIMENT_STATE_KEY]
    fields = next(
        (pair for pair in NETWORK_FIELDS if _field(experiment_state, pair[0]) is not None), None
    )
    if fields is None:
        raise ValueError(
            f"{EXPERIMENT_STATE_KEY} is {describe_pickled(experiment_state)} without "
            f"{' or '.join(pair[0] for pair in NETWORK_FIELDS)}; expected BYOL's "
            "_ByolExperimentState (pre-training) or _EvalExperimentState (linear evaluation)"
        )
    params_field, state_field = fields
    params = _field(experiment_state, params_field)
    state = _field(experiment_state, state_field)
    if state is None:
        raise ValueError(f"{EXPERIMENT_STATE_KEY} has {params_field} but no {state_field}")
    state_dict, architecture, heads = convert_haiku_resnet(params, state, where=params_field)
    others = tuple(
        f"{EXPERIMENT_STATE_KEY}.{name}"
        for name in _field_names(experiment_state)
        if name not in (params_field, state_field)
    )
    top_level = tuple(key for key in raw if key != EXPERIMENT_STATE_KEY)
    return ConvertedCheckpoint(
        state_dict=state_dict,
        backbone=_torchvision_spec(architecture),
        preprocessing=Preprocessing(),
        dropped=heads + others + top_level,
    )
