"""Which files a dataset holds, in which order: class folders, flat folders, file lists.

The order is that of torchvision's ``ImageFolder``, which earlier runs used, so their
item indices (and resumes) stay valid; files an earlier run found unreadable and that
were deleted since keep their place, so deleting them shifts no index.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from mile_ssl.data.images import IMAGE_SUFFIXES, absolute_path, collect_images, is_image_file


def first_names(names: Sequence[str], count: int = 5) -> str:
    """The first ``count`` of ``names`` for a message, and how many more there are."""
    shown = ", ".join(names[:count])
    return shown if len(names) <= count else f"{shown} and {len(names) - count} more"


def missing_under(folder: str | Path, known_bad: Collection[str]) -> list[str]:
    """Image paths of ``known_bad`` below ``folder`` that no longer exist.

    ``known_bad`` holds absolute paths; the result is written from ``folder`` as given,
    the form a walk of ``folder`` produces, so it sorts among the walked files.
    """
    base = absolute_path(folder)
    prefix = base.rstrip(os.sep) + os.sep
    return [
        os.path.join(str(folder), os.path.relpath(path, base))
        for path in known_bad
        if path.startswith(prefix) and is_image_file(path) and not os.path.exists(path)
    ]


def class_samples(
    root: Path, classes: Sequence[str], known_bad: Collection[str]
) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """``(path, label)`` of every image below ``root/<class>``, and images per class folder.

    The order and path strings are those of torchvision's ``ImageFolder`` (class names
    sorted, then each class folder walked in sorted order), which earlier runs used, so
    their item indices stay valid. Files of ``known_bad`` that were deleted since are
    listed at the position they had, so deleting unreadable files shifts no index.

    Returns:
        The samples, and the number of images of each class whose folder exists.
    """
    directory = os.path.expanduser(str(root))
    samples: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for label, name in sorted(enumerate(classes), key=lambda entry: entry[1]):
        folder = os.path.join(directory, name)
        if not os.path.isdir(folder):
            continue
        entries = {
            (walked, file_name)
            for walked, _, file_names in os.walk(folder, followlinks=True)
            for file_name in file_names
            if is_image_file(os.path.join(walked, file_name))
        }
        entries.update(os.path.split(path) for path in missing_under(folder, known_bad))
        counts[name] = len(entries)
        samples += [
            (os.path.join(walked, file_name), label) for walked, file_name in sorted(entries)
        ]
    return samples, counts


def indices_of(samples: Sequence[tuple[str, int]], known: Collection[str]) -> frozenset[int]:
    """Positions of ``samples`` whose file is one of the absolute paths ``known``."""
    if not known:
        return frozenset()
    names = {os.path.basename(path) for path in known}
    return frozenset(
        position
        for position, (path, _) in enumerate(samples)
        if os.path.basename(path) in names and absolute_path(path) in known
    )


def list_unlabeled_images(
    root: str | Path | None, file_list: str | Path | None, known_bad: Collection[str] = ()
) -> list[Path]:
    """Image files of ``data.unlabeled_root`` and/or ``data.unlabeled_list``.

    ``root`` alone: every image below it, at any depth, sorted. ``file_list`` (one path
    per line): the listed images; relative paths resolve against ``root`` if given,
    else against the list's folder. Files of ``known_bad`` (unreadable in an earlier
    run) that were deleted since stay in the list at their place, so the indices of the
    others do not shift on resume.

    Raises:
        FileNotFoundError: Naming the missing folder, or the list and its first
            missing images.
        ValueError: If no image is found.
    """
    known = {absolute_path(path) for path in known_bad}
    if root is not None and not Path(root).is_dir():
        raise FileNotFoundError(f"data.unlabeled_root: folder {root} does not exist")
    if file_list is None:
        assert root is not None
        deleted = [
            Path(path) for path in missing_under(root, known) if not Path(path).name.startswith(".")
        ]
        try:
            images = collect_images([root])
        except ValueError as error:
            if not deleted:
                raise ValueError(f"data.unlabeled_root: {error}") from error
            images = []
        return sorted({*images, *deleted}) if deleted else images
    base = Path(root) if root is not None else Path(file_list).parent
    lines = Path(file_list).read_text().splitlines()
    paths = [base / line.strip() for line in lines if line.strip()]
    missing = [
        str(path) for path in paths if not path.is_file() and absolute_path(path) not in known
    ]
    if missing:
        raise FileNotFoundError(
            f"data.unlabeled_list={file_list}: {len(missing)} of {len(paths)} listed "
            f"images do not exist, e.g. {missing[:3]}"
        )
    if not paths:
        raise ValueError(f"data.unlabeled_list={file_list}: lists no images")
    return paths


def flat_samples(root: Path, labels: Mapping[str, int]) -> list[tuple[str, int]]:
    """``(path, label)`` of the images directly in ``root`` that ``labels`` names."""
    images = sorted(path for path in root.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    unlabelled = [path.name for path in images if path.name not in labels]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} images in {root} have no ground-truth label, e.g. {unlabelled[:5]}"
        )
    return [(str(path), labels[path.name]) for path in images]
