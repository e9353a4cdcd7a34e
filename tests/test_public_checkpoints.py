"""Named public checkpoints: download, resume, hash checks, cache, offline message.

Files are served by a local HTTP server on 127.0.0.1 that honours ``Range`` requests and
can cut a transfer short, as a flaky connection does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mile_ssl import public_checkpoints as hub
from mile_ssl.commands.train import initial_backbone
from mile_ssl.config import compose_train_config
from mile_ssl.public_checkpoints import (
    format_public_checkpoints,
    public_checkpoints,
    register_checkpoints,
    resolve_public_checkpoint,
)
from tests.layouts import Writer, byol, dino, moco, mocov3, plain_resnet50, simclrv2, swav

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


class _Server:
    """Serves PAYLOAD at /file.pth; ``cut_after`` bytes end the next full transfer early."""

    def __init__(self, payload: bytes = PAYLOAD) -> None:
        self.payload = payload
        self.cut_after: int | None = None
        self.requests: list[str | None] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(owner.payload) - 1}")
                else:
                    self.send_response(200)
                body = owner.payload[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if owner.cut_after is not None:
                    self.wfile.write(body[: owner.cut_after])
                    owner.cut_after = None
                    self.wfile.flush()
                    self.connection.close()
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/file.pth"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    served = _Server()
    yield served
    served.stop()


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shipped registry plus this test's entries, and a cache of its own."""
    public_checkpoints()
    saved = dict(hub._REGISTRY.entries)
    monkeypatch.setenv("MILE_SSL_CACHE", str(tmp_path / "cache"))
    yield
    hub._REGISTRY.entries.clear()
    hub._REGISTRY.entries.update(saved)


def _entry(name: str, url: str, sha256: str | None) -> dict[str, Any]:
    return {
        "name": name,
        "method": "test",
        "architecture": "torchvision:resnet18",
        "epochs": 1,
        "file_name": f"{name}.pth",
        "adapter": "torchvision",
        "urls": [url],
        "sha256": sha256,
    }


def test_download_checks_the_published_hash_and_reuses_the_cache(
    server: _Server, registry: None, tmp_path: Path
) -> None:
    register_checkpoints([_entry("published", server.url, DIGEST)])
    path = resolve_public_checkpoint("published")
    assert path == tmp_path / "cache" / "published.pth" and path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "published.pth",
        "published.pth.verified",  # its hashes, so that later uses need not read it
    ]
    server.stop()  # no network from here on
    assert resolve_public_checkpoint("published") == path


def test_interrupted_download_resumes(server: _Server, registry: None) -> None:
    register_checkpoints([_entry("flaky", server.url, DIGEST)])
    server.cut_after = 300_000
    with pytest.raises(ValueError, match="cannot download flaky") as info:
        resolve_public_checkpoint("flaky")
    assert "put it at" in str(info.value)
    partial = hub.cached_path(hub.get_public_checkpoint("flaky")).with_suffix(".pth.part")
    assert partial.stat().st_size == 300_000
    path = resolve_public_checkpoint("flaky")
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == "bytes=300000-"
    assert not partial.exists()


def test_hash_mismatch_is_refused_and_not_kept(server: _Server, registry: None) -> None:
    register_checkpoints([_entry("tampered", server.url, "0" * 64)])
    with pytest.raises(ValueError, match=f"SHA-256 is {DIGEST} where the catalogue has 0000"):
        resolve_public_checkpoint("tampered")
    folder = hub.cache_dir()
    assert not (folder / "tampered.pth").exists() and not (folder / "tampered.pth.part").exists()


def test_unpublished_hash_is_recorded_then_checked(server: _Server, registry: None) -> None:
    register_checkpoints([_entry("unhashed", server.url, None)])
    path = resolve_public_checkpoint("unhashed")
    recorded = path.with_name("unhashed.pth.sha256")
    assert recorded.read_text().split()[0] == DIGEST
    changed = path.with_name("changed")
    changed.write_bytes(PAYLOAD[:-1] + b"x")
    changed.replace(path)  # another file of the same size moved over the cached one
    with pytest.raises(ValueError, match=f"where its first use recorded {DIGEST}"):
        resolve_public_checkpoint("unhashed")


def test_offline_names_the_url_and_the_place_for_the_file(registry: None) -> None:
    register_checkpoints([_entry("offline", "http://127.0.0.1:9/file.pth", None)])
    with pytest.raises(ValueError) as info:
        resolve_public_checkpoint("offline")
    message = str(info.value)
    assert "http://127.0.0.1:9/file.pth" in message
    assert str(hub.cache_dir() / "offline.pth") in message


def test_unknown_name_lists_the_known_ones(registry: None) -> None:
    with pytest.raises(ValueError, match="mocov2_800ep"):
        resolve_public_checkpoint("mocov9")


LAYOUT_OF: dict[str, Writer] = {
    "mocov1": moco(1),
    "mocov2": moco(2),
    "mocov3": mocov3,
    "swav": swav(multi=False),
    "deepclusterv2": swav(multi=True),
    "selav2": swav(multi=True),
    "dino": dino(vit=False),
    "byol": byol,
    "barlowtwins": plain_resnet50,
    "vicreg": plain_resnet50,
    "simclrv2": simclrv2(1, selective_kernel=False),
}
"""The upstream layout of each registry entry, by the start of its name."""


VIT_LAYOUT_OF: dict[str, Any] = {
    "dinov2": lambda arch: _meta_state_dict(arch, dinov2=True),
    "mae": lambda arch: {"model": _meta_state_dict(arch, dinov2=False)},
}
"""The released ViT layouts, built on the meta device (ViT-g/14 has 1.1 B parameters)."""


def _meta_state_dict(arch: str, dinov2: bool) -> dict[str, Any]:
    import timm
    import torch

    with torch.device("meta"):
        state = timm.create_model(arch, num_classes=0).state_dict()
    if dinov2:
        state["mask_token"] = torch.empty(1, state["cls_token"].shape[-1], device="meta")
    if "reg_token" in state:
        # Back to DINOv2's names: the class position inside pos_embed, register_tokens.
        state["register_tokens"] = state.pop("reg_token")
        width = state["pos_embed"].shape[-1]
        state["pos_embed"] = torch.empty(1, 1 + state["pos_embed"].shape[1], width, device="meta")
    return state


@pytest.mark.parametrize(
    "name", [name for name in sorted(public_checkpoints()) if name.split("_")[0] in VIT_LAYOUT_OF]
)
def test_every_vit_entry_names_the_architecture_its_adapter_finds(name: str) -> None:
    from mile_ssl.adapters import AdapterOptions, get_adapter

    entry = public_checkpoints()[name]
    raw = VIT_LAYOUT_OF[name.split("_")[0]](entry.architecture.removeprefix("timm:"))
    adapter = get_adapter(entry.adapter)
    assert adapter.detect(raw)
    converted = adapter.convert(raw, AdapterOptions())
    assert converted.backbone is not None and converted.backbone.name == entry.architecture
    assert entry.urls and entry.source and entry.license


@pytest.mark.parametrize(
    "name",
    [name for name in sorted(public_checkpoints()) if name.split("_")[0] not in VIT_LAYOUT_OF],
)
def test_every_entry_loads_a_file_in_its_layout(name: str, tmp_path: Path) -> None:
    entry = public_checkpoints()[name]
    writer = LAYOUT_OF[name.split("_")[0]]
    if name.startswith("simclrv2"):
        writer = simclrv2(1, selective_kernel=name.endswith("sk1"))
    path = writer(tmp_path)
    config = compose_train_config(
        [f"checkpoint.path={path}", f"checkpoint.adapter={entry.adapter}"]
    )
    loaded = initial_backbone(config.backbone, config.checkpoint)
    assert loaded.adapter == entry.adapter and loaded.spec.name == entry.architecture
    assert entry.urls or entry.notes, "an entry without a download says how to get the file"
    assert entry.linear_top1 is not None and entry.source and entry.license


def test_checkpoint_name_trains_from_the_downloaded_file(registry: None, tmp_path: Path) -> None:
    server = _Server(moco(2)(tmp_path).read_bytes())
    try:
        entry = _entry("local_moco", server.url, None)
        register_checkpoints(
            [entry | {"adapter": "mocov2", "architecture": "torchvision:resnet50"}]
        )
        config = compose_train_config(["checkpoint.name=local_moco"])
        loaded = initial_backbone(config.backbone, config.checkpoint)
    finally:
        server.stop()
    assert loaded.adapter == "mocov2" and loaded.spec.name == "torchvision:resnet50"
    assert loaded.source == hub.cache_dir() / "local_moco.pth"


def test_path_and_name_together_are_refused() -> None:
    with pytest.raises(ValueError, match="checkpoint.path.*checkpoint.name"):
        compose_train_config(["checkpoint.path=a.pt", "checkpoint.name=mocov2_800ep"])


def test_plugins_add_entries_through_their_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: None
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "ssl_zoo_plugin.py").write_text(
        "def entries():\n"
        "    return [{'name': 'zoo_r50', 'method': 'Zoo', 'architecture': 'torchvision:resnet50',"
        " 'epochs': 10, 'file_name': 'zoo.pth', 'adapter': 'torchvision',"
        " 'urls': ['https://example.org/zoo.pth']}]\n"
    )
    info = site / "ssl_zoo_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ssl-zoo-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[mile_ssl.checkpoints]\nzoo = ssl_zoo_plugin:entries\n")
    monkeypatch.syspath_prepend(str(site))
    hub._REGISTRY.entries.clear()
    hub._REGISTRY.loaded = False
    entries = public_checkpoints()
    assert entries["zoo_r50"].urls == ("https://example.org/zoo.pth",)
    assert "mocov2_800ep" in entries


def test_listing_says_what_is_cached(server: _Server, registry: None) -> None:
    register_checkpoints([_entry("listed", server.url, DIGEST)])
    row = next(line for line in format_public_checkpoints().splitlines() if "listed" in line)
    assert row.endswith("no")
    resolve_public_checkpoint("listed")
    table = format_public_checkpoints()
    assert next(line for line in table.splitlines() if "listed" in line).endswith("yes")
    assert any("mocov2_800ep" in line and "71.1" in line for line in table.splitlines())
    assert "convert" in next(line for line in table.splitlines() if "simclrv2_r50_1x_sk1" in line)
