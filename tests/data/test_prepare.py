"""prepare end to end on a tiny CSV dataset: outputs, box mapping, bad input reported one line each, re-runs."""

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammodetr.cli import main as cli_main
from mammodetr.data.converters import convert
from mammodetr.data.geometry import ImageTransform
from mammodetr.data.prepare import map_box, prepare_dataset
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.records import Conversion, ImageRecord

H, W = 120, 90
FIELDS = ["image_path", "patient_id", "label", "laterality", "view", "study_id", "x1", "y1", "x2", "y2",
          "lesion_label"]


def source_paths(report: dict) -> dict[str, str]:
    """Keyed source hash -> source path, from the private source map the report names."""
    return json.loads(Path(report["source_map"]).read_text())["sources"]


def _breast_png(path, lesion=(20, 50, 32, 62), side="L"):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W), np.float32)
    img[(xx / 60.0) ** 2 + ((yy - 60) / 50.0) ** 2 < 1] = 0.4
    x1, y1, x2, y2 = lesion
    img[y1:y2, x1:x2] = 1.0
    if side == "R":
        img = img[:, ::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 65535 + 0.5).astype(np.uint16)).save(path)


@pytest.fixture()
def csv_dataset(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i in range(6):
        _breast_png(src / "img" / f"{i}.png")
        label = ["normal", "benign", "malignant"][i % 3]
        box = ["", "", "", ""] if label == "normal" else [20, 50, 32, 62]
        rows.append([f"img/{i}.png", f"MRN-{1000 + i // 2}", label, "L", "CC", f"ACC{i // 2}", *box,
                     "" if label == "normal" else label])
    (src / "img" / "empty.png").write_bytes(b"")
    rows += [
        ["img/1.png", "MRN-1000", "benign", "L", "CC", "ACC0", -10, 40, 25, 70, "benign"],  # partly outside
        ["img/1.png", "MRN-1000", "benign", "L", "CC", "ACC0", 200, 200, 250, 260, "benign"],  # fully outside
        ["img/2.png", "MRN-1001", "malignant", "L", "CC", "ACC1", 10, 10, 10, 30, "malignant"],  # degenerate
        ["img/2.png", "MRN-1001", "malignant", "L", "CC", "ACC1", "nan", 10, 20, 30, "malignant"],  # NaN
        ["img/missing.png", "MRN-1009", "normal", "", "", "", "", "", "", "", ""],  # image missing
        ["img/empty.png", "MRN-1009", "normal", "", "", "", "", "", "", "", ""],  # zero-byte image
        ["./img/3.png", "MRN-1001", "normal", "L", "CC", "ACC1", "", "", "", "", ""],  # same file again
    ]
    with open(src / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        w.writerows(rows)
    return src / "table.csv"


def test_prepare_end_to_end_with_bad_input(csv_dataset, tmp_path):
    out = tmp_path / "out"
    lines = []
    options = PrepareOptions(max_side=60, flip_to="R")
    report = prepare_dataset(convert("csv", csv_dataset), out, options, workers=0, progress=False,
                             log=lines.append)
    ann = json.loads((out / "annotations.json").read_text())
    assert report["images_prepared"] == len(ann["images"]) == 6
    assert report["labels"] == {"normal": 2, "benign": 2, "malignant": 2}
    assert report["images_with_boxes"] == 4 and report["boxes"] == 5
    assert ann["info"]["prepare"] == options.to_dict()

    # each problem: one line naming the file and what is wrong
    def has(file, text):
        return any(file in ln and text in ln for ln in lines)

    assert has("img/1.png", "extends outside the 120x90 image (clipped box)")
    assert has("img/1.png", "lies outside the 120x90 image (skipped box)")
    assert has("img/2.png", "degenerate")
    assert has("img/2.png", "NaN")
    assert has("img/missing.png", "image file not found")
    assert has("img/empty.png", "empty file")
    assert has("img/3.png", "duplicate image id")
    assert all("\n" not in ln for ln in lines)
    assert [p["file"] for p in report["problems"]] and len(report["problems"]) == len(lines)

    # no patient identifiers in file names or anywhere in the outputs
    for name in ("annotations.json", "prepare_report.json", "prepare_state.json"):
        text = (out / name).read_text()
        assert "MRN-" not in text and "ACC" not in text, name
    assert all("MRN" not in p.name for p in (out / "images").iterdir())
    assert len({img["patient_id"] for img in ann["images"]}) == 3

    sources = source_paths(report)
    assert sorted(sources[img["source"]] for img in ann["images"]) == [f"img/{i}.png" for i in range(6)]
    mapped_box_checked = False
    for img in ann["images"]:
        png = Image.open(out / img["file_name"])
        assert png.mode.startswith("I;16") and png.size == (img["width"], img["height"])
        assert max(png.size) <= 60
        t = ImageTransform.from_dict(img["transform"])
        assert t.output_size_hw == (img["height"], img["width"]) and t.flipped  # breast moved to the right
        boxes = [a for a in ann["annotations"] if a["image_id"] == img["id"]]
        if sources[img["source"]] == "img/0.png" or img["label"] == "normal":
            assert boxes == []
        for a in boxes:
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
        if sources[img["source"]] == "img/4.png":  # benign, one box: the bbox is the transformed original box
            expected = t.apply_boxes_xyxy([[20, 50, 32, 62]])[0]
            x, y, w, h = boxes[0]["bbox"]
            np.testing.assert_allclose([x, y, x + w, y + h], expected, atol=1e-3)
            assert boxes[0]["pathology"] == "benign"
            pixels = np.asarray(png, dtype=np.float64) / 65535
            ys, xs = np.nonzero(pixels > 0.8)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], expected, atol=1.5)
            mapped_box_checked = True
    assert mapped_box_checked


def test_rerun_skips_prepared_images_and_keeps_split(csv_dataset, tmp_path):
    out = tmp_path / "out"
    conv = convert("csv", csv_dataset)
    first = prepare_dataset(conv, out, PrepareOptions(max_side=60), workers=0, progress=False, log=lambda s: None)
    assert first["images_prepared_this_run"] == 6
    ann = json.loads((out / "annotations.json").read_text())
    ann["images"][0]["split"] = "train"
    (out / "annotations.json").write_text(json.dumps(ann))
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}

    second = prepare_dataset(convert("csv", csv_dataset), out, PrepareOptions(max_side=60), workers=0,
                             progress=False, log=lambda s: None)
    assert second["images_reused_from_earlier_run"] == 6 and second["images_prepared_this_run"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes
    ann2 = json.loads((out / "annotations.json").read_text())
    assert ann2["images"][0]["split"] == "train"
    assert [i["file_name"] for i in ann2["images"]] == [i["file_name"] for i in ann["images"]]
    assert ann2["annotations"] == ann["annotations"]

    # a changed source is prepared again; changed options prepare everything again
    src = csv_dataset.parent / "img" / "4.png"
    os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 10**9))
    third = prepare_dataset(convert("csv", csv_dataset), out, PrepareOptions(max_side=60), workers=0,
                            progress=False, log=lambda s: None)
    assert third["images_prepared_this_run"] == 1
    fourth = prepare_dataset(convert("csv", csv_dataset), out, PrepareOptions(max_side=50), workers=0,
                             progress=False, log=lambda s: None)
    assert fourth["images_prepared_this_run"] == 6


def test_worker_processes_give_the_same_result(csv_dataset, tmp_path):
    a = prepare_dataset(convert("csv", csv_dataset), tmp_path / "a", PrepareOptions(max_side=60), workers=0,
                        progress=False, log=lambda s: None)
    b = prepare_dataset(convert("csv", csv_dataset), tmp_path / "b", PrepareOptions(max_side=60), workers=2,
                        progress=False, log=lambda s: None)
    assert a["images_prepared"] == b["images_prepared"] == 6
    ann_a = json.loads((tmp_path / "a" / "annotations.json").read_text())
    ann_b = json.loads((tmp_path / "b" / "annotations.json").read_text())
    assert [i["transform"] for i in ann_a["images"]] == [i["transform"] for i in ann_b["images"]]
    assert ann_a["annotations"] == ann_b["annotations"]


def test_duplicate_coco_ids_and_unreadable_dicom(tmp_path):
    src = tmp_path / "src"
    _breast_png(src / "a.png")
    (src / "bad.dcm").write_bytes(b"\x00" * 200)
    data = {"images": [{"id": 1, "file_name": "a.png", "patient_id": "x", "label": "normal"},
                       {"id": 1, "file_name": "a.png", "patient_id": "x", "label": "normal"},
                       {"id": 2, "file_name": "bad.dcm", "patient_id": "y", "label": "normal"}],
            "annotations": []}
    (src / "c.json").write_text(json.dumps(data))
    lines = []
    report = prepare_dataset(convert("coco", src / "c.json"), tmp_path / "out", workers=0, progress=False,
                             log=lines.append)
    assert report["images_prepared"] == 1
    assert any("duplicate image id 1" in ln for ln in lines)
    assert any("bad.dcm" in ln and "DICM" in ln for ln in lines)


def test_map_box_rules():
    t = ImageTransform((100, 80)).crop(10, 0, 70, 100).resize((50, 30))
    box, problem, _ = map_box([20, 10, 40, 30], t)
    np.testing.assert_allclose(box, [5, 5, 15, 15])
    assert problem is None
    box, problem, action = map_box([0, 10, 40, 30], t)  # reaches left of the crop
    assert box[0] == 0 and "breast crop" in problem and action == "clipped box"
    assert map_box([0, 0, 5, 5], t)[0] is None  # entirely outside the crop
    assert map_box([float("inf"), 0, 5, 5], t)[0] is None
    assert map_box([30, 30, 20, 40], t)[0] is None  # swapped corners = degenerate


def test_cli_prepare_and_split(csv_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["prepare", "--source", "csv", "--input", str(csv_dataset), "--out", str(out),
                   "--max-side", "64", "--flip-to", "none", "--workers", "1", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    assert re.search(r"prepared 6 of 9 images", captured.out)
    assert "img/missing.png: image file not found" in captured.err
    assert cli_main(["split", "--data", str(out), "--fractions", "0.5", "0.25", "0.25", "--seed", "3"]) == 0
    ann = json.loads((out / "annotations.json").read_text())
    assert all(img["split"] in ("train", "val", "test") for img in ann["images"])
    assert cli_main(["prepare", "--source", "csv", "--input", str(tmp_path / "nope.csv"), "--out",
                     str(out)]) == 2
    assert "nope.csv: CSV table not found" in capsys.readouterr().err


def test_records_with_no_usable_image_prepare_nothing(tmp_path):
    conv = Conversion([ImageRecord(tmp_path / "x.png", "x", "p", "normal")], source="csv", input_root=tmp_path)
    report = prepare_dataset(conv, tmp_path / "out", workers=0, progress=False, log=lambda s: None)
    assert report["images_prepared"] == 0 and report["images_skipped"] == 1


def _crash_on_2(job):
    """Stand-in worker that kills its process on one file, as a crashing decoder would."""
    from mammodetr.data import prepare_jobs

    if job.source.endswith("2.png"):
        os._exit(3)
    return prepare_jobs._original_prepare_one(job)


def test_a_dying_worker_loses_only_its_file(csv_dataset, tmp_path, monkeypatch):
    from mammodetr.data import prepare_jobs

    monkeypatch.setattr(prepare_jobs, "_original_prepare_one", prepare_jobs.prepare_one, raising=False)
    monkeypatch.setattr(prepare_jobs, "prepare_one", _crash_on_2)
    lines = []
    report = prepare_dataset(convert("csv", csv_dataset), tmp_path / "out", PrepareOptions(max_side=60),
                             workers=2, progress=False, log=lines.append)
    assert report["images_prepared"] == 5
    assert any("img/2.png" in ln and "worker process died" in ln for ln in lines)


@pytest.fixture()
def synth_table(tmp_path):
    """Two synthetic patients whose every image has a film edge and a label block (PNG, 160 x 128)."""
    from mammodetr.data.synth import SynthOptions, generate_dataset

    return generate_dataset(tmp_path / "synth", n_patients=3, image_size=(160, 128), seed=4, progress=False,
                            options=SynthOptions(film_edge=1.0, label_block=1.0, p_normal=0.0, p_benign=0.5))


def test_masking_is_recorded_per_image_and_boxes_are_untouched(synth_table, tmp_path):
    out = tmp_path / "out"
    lines = []
    report = prepare_dataset(convert("csv", synth_table), out, PrepareOptions(crop=False, max_side=None),
                             workers=0, progress=False, log=lines.append)
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["info"]["prepare"]["mask_background"] is True
    summary = report["background_mask"]
    assert summary["images_masked"] == 12 and summary["images_not_masked"] == 0
    assert summary["images_with_film_edges"] >= 1 and 0.3 < summary["mean_fraction_masked"] < 0.8
    boxes = {}
    for a in ann["annotations"]:
        boxes.setdefault(a["image_id"], []).append(a["bbox"])
    assert boxes
    sources = json.loads(Path(report["source_map"]).read_text())["sources"]  # the private hash -> path map
    for img in ann["images"]:
        record = img["background_mask"]
        assert record["applied"] and 0 < record["fraction"] < 1 and record["boxes_outside_mask"] == 0
        prepared = np.asarray(Image.open(out / img["file_name"]), dtype=np.int64)
        source = np.asarray(Image.open(synth_table.parent / sources[img["source"]]), dtype=np.int64)
        assert (prepared <= source).all() and (prepared < source).any()  # only set to 0 ...
        for x, y, w, h in boxes.get(img["id"], []):  # ... never inside a lesion box
            ys, xs = slice(int(y), int(np.ceil(y + h))), slice(int(x), int(np.ceil(x + w)))
            np.testing.assert_array_equal(prepared[ys, xs], source[ys, xs])
    assert not any("background" in ln for ln in lines)
    # A box that moves changes what masking keeps: that image (only) is prepared again.
    rows = list(csv.DictReader(open(synth_table, newline="")))
    row = next(r for r in rows if r["x1"])
    row["x1"] = str(int(row["x1"]) - 3)
    with open(synth_table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    again = prepare_dataset(convert("csv", synth_table), out, PrepareOptions(crop=False, max_side=None), workers=0,
                            progress=False, log=lambda s: None)
    assert again["images_prepared_this_run"] == 1


def _as_written_before_masking(out):
    """Make a dataset prepared with masking off look as a version without masking wrote it."""
    ann = json.loads((out / "annotations.json").read_text())
    ann["info"]["prepare"] = {k: v for k, v in ann["info"]["prepare"].items() if not k.startswith("mask_")}
    for img in ann["images"]:
        del img["background_mask"]
    (out / "annotations.json").write_text(json.dumps(ann))
    state = json.loads((out / "prepare_state.json").read_text())
    for entry in state["images"].values():
        del entry["boxes_in"], entry["result"]["background_mask"]
    (out / "prepare_state.json").write_text(json.dumps(state))


def test_an_unmasked_dataset_stays_unmasked_unless_asked(synth_table, tmp_path, capsys):
    out = tmp_path / "old"
    args = ["prepare", "--source", "csv", "--input", str(synth_table), "--out", str(out), "--workers", "1",
            "--no-progress"]
    assert cli_main(args + ["--no-mask-background"]) == 0
    _as_written_before_masking(out)
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    capsys.readouterr()
    assert cli_main(args) == 0  # the default for an existing dataset is what it recorded: no masking
    captured = capsys.readouterr()
    assert "background masking: off, as recorded" in captured.out and "12 reused" in captured.out
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["info"]["prepare"]["mask_background"] is False
    assert {p.name: p.read_bytes() for p in (out / "images").iterdir()} == before
    # Asked for, masking applies to every image at once: no mix of masked and unmasked images.
    assert cli_main(args + ["--mask-background"]) == 0
    captured = capsys.readouterr()
    assert "background masking turned on (it was off); every image is prepared again" in captured.err
    assert "0 reused" in captured.out
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["info"]["prepare"]["mask_background"] is True
    assert all(img["background_mask"]["applied"] for img in ann["images"])
    # ... and from then on the recorded default is on.
    assert cli_main(args) == 0
    assert "12 reused" in capsys.readouterr().out
    # A new dataset is masked by default.
    assert cli_main(args[:-4] + [str(tmp_path / "new")] + args[-3:]) == 0
    new = json.loads((tmp_path / "new" / "annotations.json").read_text())
    assert new["info"]["prepare"]["mask_background"] is True
