"""Adapters declared with ``register_prefixed_adapter``: the shared prefix-based conversion."""

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import torch

from mile_ssl.adapters import AdapterOptions, get_adapter, unregister_adapter
from mile_ssl.adapters.mmselfsup import convert_mmselfsup
from mile_ssl.adapters.moco import convert_mocov2
from mile_ssl.adapters.prefixed import (
    backbone_prefix,
    find_backbone_prefix,
    register_prefixed_adapter,
)
from mile_ssl.networks.preprocessing import Preprocessing

T = torch.zeros(1)


def _detect_test_format(raw: Mapping[str, Any]) -> bool:
    return "test_prefixed_marker" in raw


@pytest.fixture
def test_format() -> Iterator[str]:
    name = "test_prefixed_format"
    register_prefixed_adapter(
        name,
        detect=_detect_test_format,
        signature="a 'test_prefixed_marker' key",
        prefixes=("module.net.", "net."),
        heads=("fc.", "head."),
    )
    yield name
    unregister_adapter(name)


def test_declared_adapter_keeps_the_backbone_and_lists_the_rest(test_format: str) -> None:
    state = {"net.conv1.weight": T, "net.fc.weight": T, "net.head.w": T, "proj.0.weight": T}
    raw = {"test_prefixed_marker": 1, "state_dict": state}
    converted = get_adapter(test_format).convert(raw, AdapterOptions())
    assert list(converted.state_dict) == ["conv1.weight"]
    assert converted.dropped == ("net.fc.weight", "net.head.w", "proj.0.weight")
    assert converted.expected_prefix == "net."
    assert converted.preprocessing == Preprocessing()
    with pytest.raises(ValueError, match="not supported by the 'test_prefixed_format' adapter"):
        get_adapter(test_format).convert(raw, AdapterOptions(projection_layers=1))


def test_declared_conversion_belongs_to_the_format_module(test_format: str) -> None:
    assert get_adapter("mocov2").convert is convert_mocov2
    assert convert_mocov2.__module__ == "mile_ssl.adapters.moco"
    assert convert_mmselfsup.__name__ == "convert_mmselfsup"
    assert get_adapter(test_format).convert.__module__ == __name__


def test_missing_backbone_names_where_it_was_looked_for() -> None:
    with pytest.raises(ValueError, match=r"no keys under 'backbone\.' in 'state_dict' \(first"):
        convert_mmselfsup({"meta": {}, "state_dict": {"neck.x": T}}, AdapterOptions())
    with pytest.raises(
        ValueError,
        match=r"no ResNet under \['module\.encoder_q\.', 'encoder_q\.'\] "
        r"\(expected e\.g\. 'module\.encoder_q\.conv1\.weight'; first keys: \['encoder_q\.0",
    ):
        convert_mocov2({"state_dict": {"encoder_q.0.conv1.weight": T}}, AdapterOptions())
    with pytest.raises(
        ValueError, match=r"no keys under \['a\.', 'b\.'\] \(first keys: \['c\.x'\]"
    ):
        backbone_prefix({"c.x": T}, ("a.", "b."))


def test_prefix_search_prefers_the_first_and_can_require_a_resnet() -> None:
    state = {"module.encoder_q.conv1.weight": T, "encoder_q.0.conv1.weight": T}
    prefixes = ("encoder_q.", "module.encoder_q.")
    assert find_backbone_prefix(state, prefixes) == "encoder_q."
    assert find_backbone_prefix(state, prefixes, direct_resnet=True) == "module.encoder_q."
    assert find_backbone_prefix({"x": T}, prefixes) is None
