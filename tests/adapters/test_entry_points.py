"""Third-party adapters from the ``mile_ssl.adapters`` entry-point group of an installed package."""

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mile_ssl.adapters import (
    available_adapters,
    get_adapter,
    load_backbone,
    registry,
    unregister_adapter,
)
from mile_ssl.networks.backbones import BackboneSpec, build_backbone

PLUGIN_MODULE = "mile_ssl_test_plugin_adapters"
PLUGIN_ADAPTERS = ("test_plugin_format", "test_plugin_callable")

PLUGIN_SOURCE = textwrap.dedent(
    '''
    """A plugin package's adapter module: importing it registers ``test_plugin_format``."""
    from mile_ssl.adapters import ConvertedCheckpoint, register_adapter, unwrap
    from mile_ssl.networks.backbones import BackboneSpec


    def detect(raw):
        return raw.get("plugin_format") == "test"


    @register_adapter("test_plugin_format", detect=detect, signature="'plugin_format' == 'test'")
    def convert(raw, options):
        return ConvertedCheckpoint(
            state_dict=unwrap(raw, keys=("weights",)),
            backbone=BackboneSpec("tiny_resnet", {"widths": [4, 8]}),
        )


    def register():
        register_adapter("test_plugin_callable", detect=lambda raw: False)(convert)


    def register_duplicate():
        register_adapter("torchvision", detect=lambda raw: False)(convert)
    '''
)


def _install_distribution(site: Path, entry_points: str) -> None:
    """Write a package as pip installs it: its module and a ``.dist-info`` with entry points."""
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    info = site / "mile_ssl_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mile-ssl-test-plugin\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An extra site directory on ``sys.path``, with plugins not yet loaded."""
    directory = tmp_path / "site-packages"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield directory
    for name in PLUGIN_ADAPTERS:
        if name in available_adapters():
            unregister_adapter(name)
    sys.modules.pop(PLUGIN_MODULE, None)


def test_plugins_register_adapters_once_and_broken_ones_warn(site: Path, tmp_path: Path) -> None:
    _install_distribution(
        site,
        f"""
        [mile_ssl.adapters]
        module_plugin = {PLUGIN_MODULE}
        callable_plugin = {PLUGIN_MODULE}:register
        broken_plugin = mile_ssl_no_such_plugin_module:register
        """,
    )
    with pytest.warns(RuntimeWarning, match="plugin 'broken_plugin'.*failed to load") as record:
        names = available_adapters()
    assert "mile_ssl_no_such_plugin_module" in str(record[0].message)
    assert {"test_plugin_format", "test_plugin_callable", "torchvision"} <= set(names)
    assert get_adapter("test_plugin_format").convert.__module__ == PLUGIN_MODULE
    assert registry.load_plugins() == []  # loaded once: a second lookup registers nothing

    spec = BackboneSpec("tiny_resnet", {"widths": [4, 8]})
    module, _ = build_backbone(spec)
    path = tmp_path / "plugin.pt"
    torch.save({"plugin_format": "test", "weights": module.state_dict()}, path)
    loaded = load_backbone(path)
    assert loaded.adapter == "test_plugin_format"
    assert loaded.spec == spec


def test_plugins_load_lazily_on_first_lookup(site: Path) -> None:
    _install_distribution(site, f"[mile_ssl.adapters]\nmodule_plugin = {PLUGIN_MODULE}\n")
    assert PLUGIN_MODULE not in sys.modules
    assert registry.matching_adapters({"plugin_format": "test"}) == ["test_plugin_format"]
    assert PLUGIN_MODULE in sys.modules


def test_duplicate_name_from_plugin_warns_and_keeps_builtin(site: Path) -> None:
    _install_distribution(
        site, f"[mile_ssl.adapters]\nclash = {PLUGIN_MODULE}:register_duplicate\n"
    )
    builtin = registry._ADAPTERS["torchvision"]
    with pytest.warns(RuntimeWarning, match="plugin 'clash'.*'torchvision' is already registered"):
        get_adapter("torchvision")
    assert get_adapter("torchvision") is builtin
