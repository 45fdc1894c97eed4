"""A prepared dataset that is a subset of another, with its own splits, sharing the other's images.

``mammodetr cv`` gives every fold such a folder: ``annotations.json`` (the chosen images, their boxes, each image's
``split`` for this fold, ``info.subset_of`` naming the source) beside ``images`` and ``cache`` links to the
source's folders, so no image is copied and the resized-image cache is shared. The source is never written to,
except that its ``cache`` folder is created when missing. Where the platform cannot link folders, each image is
hard-linked (or, across file systems, copied) instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mammodetr.atomic import write_json
from mammodetr.data.ground_truth import ANNOTATIONS, read_annotations
from mammodetr.data.split import check_no_leakage, split_counts

__all__ = ["write_subset"]


def _link_folder(source: Path, target: Path) -> None:
    """``target`` -> ``source`` as a folder link (kept when it already points there)."""
    if target.is_symlink() and target.resolve() == source.resolve():
        return
    if target.is_symlink():
        target.unlink()
    target.symlink_to(source.resolve(), target_is_directory=True)


def _link_files(source: Path, target: Path, names: list[str]) -> None:
    """Hard links (or copies, across file systems) of the named files of ``source`` in ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        dst = target / name
        if dst.exists():
            continue
        try:
            os.link(source / name, dst)
        except OSError:
            shutil.copy2(source / name, dst)


def _link_images(source: Path, out: Path, images: list[dict]) -> None:
    folders = sorted({Path(img["file_name"]).parts[0] for img in images if len(Path(img["file_name"]).parts) > 1})
    for folder in folders:
        target = out / folder
        if target.is_dir() and not target.is_symlink():  # an earlier run without folder links
            names = [Path(img["file_name"]).name for img in images if Path(img["file_name"]).parts[0] == folder]
            _link_files(source / folder, target, names)
            continue
        try:
            _link_folder(source / folder, target)
        except OSError:  # no symbolic links here (e.g. Windows without developer mode)
            names = [Path(img["file_name"]).name for img in images if Path(img["file_name"]).parts[0] == folder]
            _link_files(source / folder, target, names)
    try:
        (source / "cache").mkdir(exist_ok=True)
        _link_folder(source / "cache", out / "cache")
    except OSError:
        pass  # each subset then caches on its own


def write_subset(source_dir: str | Path, out_dir: str | Path, splits: dict[int, str], *,
                 info: dict | None = None) -> Path:
    """Write a dataset folder holding the images of ``source_dir`` named in ``splits``, with those splits.

    Args:
        source_dir: a prepared dataset folder.
        out_dir: the subset's folder (created; an existing subset there is brought up to date).
        splits: image id -> split name for every image to keep (other images and their boxes are left out).
        info: recorded as ``info.subset_of`` extras (e.g. the fold).

    Returns:
        The subset's ``annotations.json``.

    Raises:
        ValueError: ``splits`` names an image the source lacks, or leaves no image.
        LeakageError: a patient would be in two splits.
    """
    source, out = Path(source_dir), Path(out_dir)
    coco = read_annotations(source)
    known = {int(img["id"]) for img in coco.get("images", [])}
    missing = sorted(set(map(int, splits)) - known)
    if missing:
        raise ValueError(f"{source / ANNOTATIONS}: has no image with id {missing[:5]}")
    if not splits:
        raise ValueError(f"{source / ANNOTATIONS}: the subset holds no image")
    images = [{**img, "split": splits[int(img["id"])]} for img in coco["images"] if int(img["id"]) in splits]
    check_no_leakage(images, f"subset {out}")
    ids = {int(img["id"]) for img in images}
    subset_info = {"path": str(source.resolve()), **(info or {})}
    data = {**coco, "images": images,
            "annotations": [a for a in coco.get("annotations", []) if int(a["image_id"]) in ids],
            "info": {**coco.get("info", {}), "split": {"counts": split_counts(images)}, "subset_of": subset_info}}
    out.mkdir(parents=True, exist_ok=True)
    _link_images(source, out, images)
    return write_json(out / ANNOTATIONS, data, indent=1)
