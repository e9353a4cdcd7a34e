from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mile_ssl.adapters import load_backbone
from mile_ssl.commands.demo import (
    DEMO_RUNS,
    EXAMPLE_GRIDS,
    HIT,
    MISSED,
    WRONG,
    demo_figure,
    run_demo,
)
from mile_ssl.data.digits import DigitGridConfig, DigitGridDataset, make_digit_grids
from mile_ssl.runs.finished_run import read_finished_run


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
    check_examples(tmp_path, results)


def check_examples(output: Path, results: dict[str, dict[str, float]]) -> None:
    """The predicted label sets beside the figure, and the figure's panel of them."""
    examples = json.loads((output / "examples.json").read_text())
    # The quick demo's validation grids, built here from their settings.
    _, val = make_digit_grids(DigitGridConfig(num_train=512, num_val=128))
    assert [example["index"] for example in examples] == list(range(EXAMPLE_GRIDS))
    for example in examples:
        index = example["index"]
        assert example["cells"] == val.cells[index].view(3, 3).tolist()
        assert example["digits"] == torch.nonzero(val.label_sets[index]).flatten().tolist()
        assert example["label"] == int(val.labels[index])
        assert list(example["predicted"]) == list(results)
        assert all(example["predicted"][name] for name in results)  # never an empty set
        assert len(example["predicted"]["softmax"]) == 1  # a softmax network names one
    # The sets are the run's own: argmax plus every sigmoid above the run's threshold.
    run = read_finished_run(output / "runs" / "mile")
    module = run.build_module().eval()
    images = torch.stack([DigitGridDataset(val)[index]["image"] for index in range(EXAMPLE_GRIDS)])
    normalised = (images - torch.tensor(run.preprocessing.mean).view(1, 3, 1, 1)) / torch.tensor(
        run.preprocessing.std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        probabilities = torch.sigmoid(module(normalised).double())
    threshold = module.method.eval_threshold
    for example, row in zip(examples, probabilities, strict=True):
        expected = {int(row.argmax())} | {j for j in range(10) if row[j] > threshold}
        assert example["predicted"]["mile"] == sorted(expected)

    figure = demo_figure(results, examples, DigitGridDataset(val))
    figure.draw_without_rendering()
    bars, *panel = figure.axes
    assert len(panel) == 2 * EXAMPLE_GRIDS  # per grid: the grid, and its table of sets
    legend = bars.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == list(results)
    box = legend.get_window_extent()
    assert figure.bbox.x1 >= box.x1 and figure.bbox.y1 >= box.y1  # not cut off
    assert len(bars.patches) == len(results) * 6
    assert not any(box.overlaps(bar.get_window_extent()) for bar in bars.patches)
    for example, table in zip(examples, panel[1::2], strict=True):
        colours = table.get_images()[0].get_array()
        assert colours.shape == (len(results), 10, 3)
        for row, name in enumerate(results):
            for digit in range(10):
                predicted = digit in example["predicted"][name]
                shown = digit in example["digits"]
                expected_colour = (HIT if shown else WRONG) if predicted else None
                if expected_colour is None:
                    expected_colour = MISSED if shown else (1.0, 1.0, 1.0)
                assert tuple(colours[row, digit]) == expected_colour
