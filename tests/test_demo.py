from __future__ import annotations

import json
from pathlib import Path

from mile_ssl.adapters import load_backbone
from mile_ssl.demo import run_demo


def test_quick_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    results = run_demo(tmp_path, quick=True)
    assert list(results) == ["softmax", "sigmoid", "mile"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The SSL checkpoint it fine-tunes from is a real backbone file.
    loaded = load_backbone(tmp_path / "ssl_checkpoint.pt")
    assert loaded.adapter == "mile_ssl" and loaded.spec.name == "tiny_resnet"
    for method in results:
        run = json.loads((tmp_path / "runs" / method / "metrics.json").read_text())
        assert run["adapter"] == "mile_ssl"
        assert run["checkpoint"] == str(tmp_path / "ssl_checkpoint.pt")
