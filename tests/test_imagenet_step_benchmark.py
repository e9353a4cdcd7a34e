"""``benchmarks/imagenet_step.py --quick`` and ``benchmarks/gpu_check.sh`` on this machine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import BENCHMARKS, load_benchmark


def test_quick_run_prints_every_measurement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_benchmark("imagenet_step").main(["--quick", "--cache", str(tmp_path), "--workers", "1"])
    result = capsys.readouterr()
    report = json.loads(result.out)
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["sizes"]["backbone"] == "resnet18" and report["sizes"]["image_size"] == 64
    assert report["sizes"]["workers"] == 1
    tree = Path(report["tree"]["root"])
    assert tree.parent == tmp_path
    jpegs = sorted(tree.glob("*/*/*.JPEG"))
    assert len(jpegs) == report["tree"]["train_images"] + report["tree"]["val_images"]
    with Image.open(jpegs[0]) as image:
        assert (image.format, image.size) == ("JPEG", (500, 375))

    eager = report["model_step"]["eager"]
    assert eager["images_per_second"] > 0 and eager["peak_rss_mib"] > 0
    assert "skipped" in report["model_step"]["compiled"]

    assert set(report["backends"]) == {"torchvision", "dali"}
    for name, backend in report["backends"].items():
        if not backend["available"]:
            assert name != "torchvision", backend
            assert backend["reason"]
            continue
        pipeline = backend["pipeline"]
        assert pipeline["images_per_second"] > 0 and pipeline["workers"] == 1
        assert pipeline["images_per_second_per_worker"] == pipeline["images_per_second"]
        for method in ("sigmoid", "mile"):
            assert backend["training"][method]["images_per_second"] > 0
            assert backend["training"][method]["peak_rss_mib"] > 0
        assert backend["mile_over_sigmoid"] > 0
        assert backend["sigmoid_over_model_step"] > 0
        assert backend["cpu_cores_per_device"]["eager"] > 0


def test_tree_is_written_once_and_reused(tmp_path: Path) -> None:
    trees = load_benchmark("synthetic_imagenet")
    root, written = trees.synthetic_tree(tmp_path, train_per_class=2, val_per_class=1)
    assert written["written_seconds"] is not None
    assert len(list((root / "train").glob("n*/n*_*.JPEG"))) == 2 * trees.CLASSES
    assert sorted(path.name for path in (root / "val").glob("*/*.JPEG"))[0] == (
        "ILSVRC2012_val_00000001.JPEG"
    )
    again, reused = trees.synthetic_tree(tmp_path, train_per_class=2, val_per_class=1)
    assert again == root and reused["written_seconds"] is None
    assert [path.name for path in tmp_path.iterdir()] == [root.name]


def test_arguments_are_checked() -> None:
    script = load_benchmark("imagenet_step")
    with pytest.raises(SystemExit):
        script.parse_args(["--workers", "0"])
    with pytest.raises(SystemExit):
        script.parse_args(["--backends", "pil"])
    args = script.parse_args(["--quick", "--backends", "torchvision"])
    assert (args.device, args.quick, args.backends) == ("cpu", True, ["torchvision"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script runs the check")
def test_gpu_check_refuses_to_run_without_cuda() -> None:
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gpu_check.sh: no CUDA device visible to torch")
    assert lines[0].endswith("this check needs a GPU")
