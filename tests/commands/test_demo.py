from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from mile_ssl.adapters import load_backbone
from mile_ssl.commands.demo import DEMO_RUNS, run_demo


def test_quick_demo_runs_the_whole_pipeline(tmp_path: Path) -> None:
    results = run_demo(tmp_path, quick=True)
    assert list(results) == ["softmax", "sigmoid", "mile", "mile 10 %", "mile_semi 10 %"]
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The SSL checkpoint it fine-tunes from is a real backbone file.
    loaded = load_backbone(tmp_path / "ssl_checkpoint.pt")
    assert loaded.adapter == "mile_ssl" and loaded.spec.name == "tiny_resnet"
    for demo_run in DEMO_RUNS:
        run = json.loads((tmp_path / "runs" / demo_run.directory / "metrics.json").read_text())
        assert run["adapter"] == "mile_ssl"
        assert run["checkpoint"] == str(tmp_path / "ssl_checkpoint.pt")
        fraction = 0.1 if "10 %" in demo_run.name else 1.0
        assert abs(run["labelled_images"] - fraction * 512) <= 5  # stratified per class
        # The 10 % rows run the semi-supervised benchmark's setting.
        config = OmegaConf.load(tmp_path / "runs" / demo_run.directory / "resolved_config.yaml")
        assert config.data.strong_student_view == (fraction < 1)
        assert config.mile.unlabeled_weight is None  # the setting validation chose
    # The semi-supervised row recorded its pseudo-labels on the unlabeled 90 %.
    history = json.loads((tmp_path / "runs/mile_semi_10pct/pseudo_labels.json").read_text())
    assert "pseudo_labels_per_image_unlabeled" in history[0]
