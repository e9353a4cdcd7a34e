"""``predict`` on real JPEG files: sets, thresholds, top-k, ImageNet names, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from mile_ssl.cli import main
from mile_ssl.commands.predict import (
    display_names,
    format_predictions,
    predict,
    prediction_failures,
)
from mile_ssl.commands.train import run_training
from mile_ssl.config import compose_train_config
from mile_ssl.data.augment import eval_transform
from mile_ssl.data.images import NOT_FOUND
from mile_ssl.networks.preprocessing import Preprocessing
from mile_ssl.runs.finished_run import read_finished_run
from tests.conftest import TINY_OVERRIDES, folder_run_overrides, run_cli_in_process

WNIDS = ("n01440764", "n01443537", "n01484850")
NAMES = ("tench", "goldfish", "great white shark")


def _write_jpegs(root: Path, per_class: int) -> None:
    generator = torch.Generator().manual_seed(per_class)
    for label, wnid in enumerate(WNIDS):
        folder = root / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            pixels = torch.rand(30, 34, 3, generator=generator) * 100
            pixels[..., label] += 150
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / f"{wnid}_{index}.JPEG")


@pytest.fixture(scope="module")
def image_root(module_tmp_path: Path) -> Path:
    root = module_tmp_path / "images"
    _write_jpegs(root / "train", per_class=4)
    _write_jpegs(root / "val", per_class=1)
    return root


def _train(root: Path, out: Path, method: str) -> Path:
    config = compose_train_config(
        [
            *TINY_OVERRIDES,
            f"method={method}",
            *folder_run_overrides(root),
        ]
    )
    return run_training(config, out).last_checkpoint


@pytest.fixture(scope="module")
def mile_checkpoint(image_root: Path, module_tmp_path: Path) -> Path:
    return _train(image_root, module_tmp_path / "mile", "mile")


@pytest.fixture(scope="module")
def softmax_checkpoint(image_root: Path, module_tmp_path: Path) -> Path:
    return _train(image_root, module_tmp_path / "softmax", "softmax")


def _indices(entries: list[dict]) -> set[int]:
    return {entry["class_index"] for entry in entries}


def test_folder_and_single_file(mile_checkpoint: Path, image_root: Path) -> None:
    single = image_root / "val" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG"
    results = predict(mile_checkpoint, [image_root / "val", single], image_size=32)
    # The folder's three images in sorted order; the file named again is not repeated.
    assert [Path(result["path"]).name for result in results] == [f"{wnid}_0.JPEG" for wnid in WNIDS]
    alone = predict(mile_checkpoint, [single], image_size=32)
    assert len(alone) == 1 and alone[0]["path"] == str(single)
    # Batched and single forwards agree up to float rounding.
    assert [entry["class_index"] for entry in alone[0]["top_k"]] == [
        entry["class_index"] for entry in results[2]["top_k"]
    ]
    assert [entry["probability"] for entry in alone[0]["top_k"]] == pytest.approx(
        [entry["probability"] for entry in results[2]["top_k"]]
    )
    for result in results:
        top = result["top_k"]
        assert len(top) == 3  # top_k=5 is capped at the 3 classes
        assert [entry["probability"] for entry in top] == sorted(
            (entry["probability"] for entry in top), reverse=True
        )
        assert top[0]["class_index"] in _indices(result["predicted"])  # argmax is in the set
        assert result["probabilities"] == "sigmoid"
        assert result["error"] is None


def test_probabilities_match_the_network_with_eval_preprocessing(
    mile_checkpoint: Path, image_root: Path
) -> None:
    path = image_root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    (result,) = predict(mile_checkpoint, [path], image_size=32, top_k=3)
    module = read_finished_run(mile_checkpoint).build_module().eval()
    transform = eval_transform(32, Preprocessing.from_dict(module.metadata["preprocessing"]))
    with torch.no_grad():
        logits = module(transform(Image.open(path).convert("RGB"))[None])[0]
    expected = torch.sigmoid(logits.double())
    for entry in result["top_k"]:
        assert entry["probability"] == pytest.approx(float(expected[entry["class_index"]]))


def test_threshold_adds_classes_above_it(mile_checkpoint: Path, image_root: Path) -> None:
    base = predict(mile_checkpoint, [image_root / "val"], image_size=32, top_k=3)
    probabilities = [entry["probability"] for result in base for entry in result["top_k"]]
    low = min(probabilities) / 2
    high = (max(probabilities) + 1) / 2
    everything = predict(mile_checkpoint, [image_root / "val"], threshold=low, image_size=32)
    argmax_only = predict(mile_checkpoint, [image_root / "val"], threshold=high, image_size=32)
    for reference, wide, narrow in zip(base, everything, argmax_only, strict=True):
        assert _indices(wide["predicted"]) == {0, 1, 2}
        assert _indices(narrow["predicted"]) == {reference["top_k"][0]["class_index"]}
        expected = {reference["top_k"][0]["class_index"]} | {
            entry["class_index"] for entry in reference["top_k"] if entry["probability"] > 0.5
        }
        assert _indices(reference["predicted"]) == expected


def test_softmax_predicts_its_argmax_only(softmax_checkpoint: Path, image_root: Path) -> None:
    results = predict(softmax_checkpoint, [image_root / "val"], threshold=0.01, image_size=32)
    for result in results:
        assert result["probabilities"] == "softmax"
        assert len(result["predicted"]) == 1
        assert result["predicted"][0]["class_index"] == result["top_k"][0]["class_index"]
        assert sum(entry["probability"] for entry in result["top_k"]) == pytest.approx(1.0)


def test_imagenet_wnids_get_readable_names(mile_checkpoint: Path, image_root: Path) -> None:
    (result,) = predict(mile_checkpoint, [image_root / "val" / WNIDS[1]], image_size=32)
    by_index = {entry["class_index"]: entry for entry in result["top_k"]}
    for index, (wnid, name) in enumerate(zip(WNIDS, NAMES, strict=True)):
        assert by_index[index]["class_name"] == name
        assert by_index[index]["class_id"] == wnid
    assert display_names(["cat", "n00000000", WNIDS[0]]) == ["cat", "n00000000", "tench"]
    table = format_predictions([result])
    assert "predicted set" in table and "top-3" in table
    assert f"{WNIDS[1]}_0.JPEG" in table and "goldfish" in table


def test_bad_inputs_are_named(mile_checkpoint: Path, tmp_path: Path) -> None:
    # Nothing to predict: an error naming the input (with others, it is reported instead).
    with pytest.raises(FileNotFoundError, match=f"missing.jpg: {NOT_FOUND}"):
        predict(mile_checkpoint, [tmp_path / "missing.jpg"])
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not a JPEG")
    (result,) = predict(mile_checkpoint, [not_an_image])  # reported, not raised
    assert result["error"] == "not an image file PIL can read"
    assert result["predicted"] == result["top_k"] == []
    assert prediction_failures([result]) == [(str(not_an_image), result["error"])]
    assert format_predictions([result]) == "no predictions"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        predict(mile_checkpoint, [tmp_path / "empty"])
    with pytest.raises(ValueError, match="threshold"):
        predict(mile_checkpoint, [not_an_image], threshold=1.5)


def test_the_crop_size_defaults_to_the_runs(mile_checkpoint: Path, image_root: Path) -> None:
    path = image_root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    (default,) = predict(mile_checkpoint.parent.parent, [path], top_k=3)  # the run folder
    (trained,) = predict(mile_checkpoint, [path], image_size=32, top_k=3)
    (larger,) = predict(mile_checkpoint, [path], image_size=64, top_k=3)
    assert default["top_k"] == trained["top_k"]
    assert default["top_k"] != larger["top_k"]


def test_missing_files_and_broken_links_are_named_and_the_rest_predicted(
    mile_checkpoint: Path, image_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    good = image_root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    (photos / "a_good.jpg").symlink_to(good)
    broken = photos / "b_gone.jpg"
    broken.symlink_to(tmp_path / "deleted.jpg")
    missing = tmp_path / "missing.jpg"
    other = image_root / "val" / WNIDS[1] / f"{WNIDS[1]}_0.JPEG"

    results = predict(mile_checkpoint, [missing, photos, other], image_size=32)
    assert [result["path"] for result in results] == [
        str(missing),
        str(photos / "a_good.jpg"),
        str(broken),
        str(other),
    ]
    assert prediction_failures(results) == [
        (str(missing), NOT_FOUND),
        (str(broken), f"broken symbolic link to {tmp_path / 'deleted.jpg'}, which does not exist"),
    ]
    assert [bool(result["top_k"]) for result in results] == [False, True, False, True]

    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(missing), str(photos), str(other), f"checkpoint={mile_checkpoint}"])
    assert exit_info.value.code == 2
    output = capsys.readouterr()
    assert output.err.splitlines() == [
        f"mile-ssl predict: {missing}: {NOT_FOUND}",
        f"mile-ssl predict: {broken}: broken symbolic link to {tmp_path / 'deleted.jpg'}, "
        "which does not exist",
    ]
    predicted = [line.split()[0] for line in output.out.splitlines() if "%" in line]
    assert predicted == [str(photos / "a_good.jpg"), str(other)]
    assert str(missing) not in output.out and str(broken) not in output.out


def test_an_input_that_is_no_image_is_named_on_stderr_only(
    mile_checkpoint: Path, image_root: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a JPEG")
    good = image_root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    result = run_cli_in_process(
        ["predict", str(notes), str(good), f"checkpoint={mile_checkpoint}"], tmp_path
    )
    assert result.returncode == 2
    assert f"mile-ssl predict: {notes}: not an image file PIL can read" in result.stderr
    assert str(notes) not in result.stdout and str(good) in result.stdout
    alone = run_cli_in_process(["predict", str(notes), f"checkpoint={mile_checkpoint}"], tmp_path)
    assert alone.returncode == 2
    assert alone.stdout.strip() == "no predictions"
    assert f"mile-ssl predict: {notes}: not an image" in alone.stderr


def test_a_crop_size_other_than_the_runs_is_said(
    mile_checkpoint: Path, image_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = image_root / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    with caplog.at_level("WARNING"):
        predict(mile_checkpoint, [path], image_size=32)
    assert not [record for record in caplog.records if "differs from the run" in record.message]
    with caplog.at_level("WARNING"):
        predict(mile_checkpoint, [path], image_size=48)
    (said,) = [record.message for record in caplog.records if "differs" in record.message]
    assert "--image-size=48" in said and "data.image_size=32" in said
