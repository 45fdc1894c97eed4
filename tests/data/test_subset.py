"""A dataset that is a subset of another: its own splits, the source's images linked (never copied or changed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mammodetr.data.dataset import MammoDataset
from mammodetr.data.split import LeakageError
from mammodetr.data.subset import write_subset


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    from mammodetr.cli import main as cli

    root = tmp_path_factory.mktemp("subset")
    assert cli(["synth", "--out", str(root / "raw"), "--patients", "3", "--size", "96", "80", "--format", "png",
                "--seed", "2", "--no-progress"]) == 0
    assert cli(["prepare", "--source", "csv", "--input", str(root / "raw" / "table.csv"), "--out", str(root / "ds"),
                "--workers", "1", "--no-progress"]) == 0
    return root / "ds"


def _coco(path: Path) -> dict:
    return json.loads((path / "annotations.json").read_text())


def test_subset_holds_the_chosen_images_with_their_splits(source, tmp_path):
    before = (source / "annotations.json").read_bytes()
    coco = _coco(source)
    pids = sorted({img["patient_id"] for img in coco["images"]})
    splits = {img["id"]: "train" if img["patient_id"] == pids[0] else "test"
              for img in coco["images"] if img["patient_id"] in pids[:2]}
    path = write_subset(source, tmp_path / "sub", splits, info={"fold": 2})
    sub = json.loads(path.read_text())
    assert {img["id"]: img["split"] for img in sub["images"]} == splits
    kept = set(splits)
    assert sub["annotations"] == [a for a in coco["annotations"] if a["image_id"] in kept]
    assert sub["info"]["subset_of"] == {"path": str(source.resolve()), "fold": 2}
    assert sub["info"]["prepare"] == coco["info"]["prepare"]
    assert sub["info"]["split"]["counts"]["train"]["patients"] == 1
    assert (source / "annotations.json").read_bytes() == before  # the source is left alone
    # The images are the source's own (linked), and the dataset loads from the subset folder.
    ds = MammoDataset(tmp_path / "sub", "test", image_size=64)
    assert len(ds) == sum(v == "test" for v in splits.values())
    image, target = ds[0]
    assert image.shape == (1, 64, 64) and target["file_name"].startswith("images/")
    assert (tmp_path / "sub" / "images").resolve() == (source / "images").resolve()
    # Written again (a resumed run), it is the same.
    write_subset(source, tmp_path / "sub", splits, info={"fold": 2})
    assert json.loads(path.read_text()) == sub


def test_subset_without_folder_links_links_each_file(source, tmp_path, monkeypatch):
    def no_symlinks(self, *args, **kwargs):
        raise OSError("symbolic links are not available")

    monkeypatch.setattr(Path, "symlink_to", no_symlinks)
    coco = _coco(source)
    write_subset(source, tmp_path / "sub", {img["id"]: "train" for img in coco["images"][:3]})
    linked = sorted(p.name for p in (tmp_path / "sub" / "images").iterdir())
    assert linked == sorted(Path(img["file_name"]).name for img in coco["images"][:3])
    assert not (tmp_path / "sub" / "images").is_symlink()
    first = coco["images"][0]["file_name"]
    assert np.array_equal(np.fromfile(tmp_path / "sub" / first, np.uint8), np.fromfile(source / first, np.uint8))


def test_subset_refuses_unknown_images_and_leakage(source, tmp_path):
    coco = _coco(source)
    with pytest.raises(ValueError, match="no image with id"):
        write_subset(source, tmp_path / "a", {10_000: "train"})
    with pytest.raises(ValueError, match="holds no image"):
        write_subset(source, tmp_path / "b", {})
    same_patient = [img["id"] for img in coco["images"] if img["patient_id"] == coco["images"][0]["patient_id"]]
    with pytest.raises(LeakageError):
        write_subset(source, tmp_path / "c", {same_patient[0]: "train", same_patient[1]: "test"})
