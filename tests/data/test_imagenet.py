from __future__ import annotations

from mile_ssl.data.imagenet import (
    SHA256,
    imagenet_classes,
    real_label_sets,
    sha256,
    shipped_file,
    shipped_split,
)


def test_shipped_files_are_the_published_ones() -> None:
    for name, digest in SHA256.items():
        assert sha256(shipped_file(name)) == digest, name
    for notice in ("README.md", "LICENSE-Apache-2.0.txt"):
        assert shipped_file(notice).stat().st_size > 0


def test_split_lists_have_the_standard_sizes() -> None:
    one = shipped_split(0.01)
    ten = shipped_split(0.1)
    assert one is not None and ten is not None
    assert len(one.read_text().split()) == 12_811
    assert len(ten.read_text().split()) == 128_116
    assert shipped_split(0.5) is None


def test_real_labels_by_file_name() -> None:
    labels = real_label_sets()
    assert len(labels) == 50_000
    assert labels["ILSVRC2012_val_00000001.JPEG"] == []
    assert labels["ILSVRC2012_val_00000002.JPEG"] == [970, 795]
    assert sum(1 for entry in labels.values() if not entry) == 3163
    classes = imagenet_classes()
    assert len(classes) == 1000 and list(classes) == sorted(classes)
    assert classes[0] == "n01440764"
