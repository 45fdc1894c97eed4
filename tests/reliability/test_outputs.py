"""Reliability, output side (issue 10): predict, evaluate, gradcam, prepare and split as a careless or hostile user
would run them. Nothing is lost, no input is written over, a wrong input is refused, and every failure is one line
on stderr with exit code 2. Train and checkpoints: test_outputs_train.py. Items of the issue are named per test.
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from mammodetr.cli import main
from mammodetr.inference.predictions import read_predictions
from tests.evaluation._synthetic import ground_truth_predictions, make_prepared_dataset
from tests.reliability._outputs_fs import (
    breast_png,
    disk_full,
    flip_weight_byte,
    read_only,
    tiny_checkpoint,
    tree,
    write_pickle_payload,
)

# the onnx extra is part of .[dev]; without it tests/cli/test_export.py is skipped and so is this load path
_HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best")


@pytest.fixture
def scans(tmp_path):
    """Three ordinary images; two share the name case.png in different folders."""
    root = tmp_path / "scans"
    breast_png(root / "a" / "case.png", 0)
    breast_png(root / "b" / "case.png", 1)
    breast_png(root / "c.png", 2)
    return root


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("mammodetr "), err
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    return lines[0]


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- item 2: overlays mirror the inputs' paths ---------------------------------------------------------------------

def test_overlays_of_same_named_inputs_do_not_overwrite_each_other(ckpt, scans, tmp_path):
    out, ov = tmp_path / "p.jsonl", tmp_path / "ov"
    assert main(["predict", "--checkpoint", str(ckpt), str(scans / "a"), str(scans / "b"), str(scans / "c.png"),
                 "--out", str(out), "--overlay", str(ov), "--no-progress"]) == 0
    rows = {r["file_name"]: r for r in _lines(out)}
    assert rows[str(scans / "a" / "case.png")]["overlay"] == str(ov / "a" / "case.png")
    assert rows[str(scans / "b" / "case.png")]["overlay"] == str(ov / "b" / "case.png")
    assert rows[str(scans / "c.png")]["overlay"] == str(ov / "c.png")
    assert (ov / "a" / "case.png").read_bytes() != (ov / "b" / "case.png").read_bytes()  # two pictures, not one


def test_gradcam_overlays_mirror_the_inputs_too(ckpt, scans, tmp_path):
    cam = tmp_path / "cam"
    assert main(["gradcam", "--checkpoint", str(ckpt), str(scans), "--out", str(cam)]) == 0
    records = json.loads((cam / "gradcam.json").read_text())
    assert sorted(r["overlay"] for r in records) == sorted(
        str(cam / p) for p in ("a/case_gradcam.png", "b/case_gradcam.png", "c_gradcam.png"))
    assert all((cam / p).is_file() for p in ("a/case_gradcam.png", "b/case_gradcam.png", "c_gradcam.png"))


def test_mirrored_names_never_collide(tmp_path):
    from mammodetr.inference.inputs import IMAGE_SUFFIXES
    from mammodetr.outputs import mirrored_paths

    files = [tmp_path / "x" / "case.dcm", tmp_path / "x" / "case.png", tmp_path / "x" / "1.2.840.7", tmp_path / "y.tif"]
    got = mirrored_paths(files, tmp_path / "ov", ".png", IMAGE_SUFFIXES)
    assert got == [tmp_path / "ov" / p for p in ("x/case.png", "x/case-2.png", "x/1.2.840.7.png", "y.png")]


# -- item 3: an output is never an input, inside one, or around one -------------------------------------------------

def _conflicts(ckpt, scans, tmp_path):
    data = make_prepared_dataset(tmp_path / "ds", n_patients=2, size_hw=(80, 60))
    preds = tmp_path / "given.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in ground_truth_predictions(data, np.random.default_rng(0))))
    c, s, d = str(ckpt), str(scans), str(data)
    return {
        "predict --overlay = input folder": ["predict", "--checkpoint", c, s, "--out", f"{tmp_path}/p.jsonl",
                                             "--overlay", s],
        "predict --overlay inside input": ["predict", "--checkpoint", c, s, "--out", f"{tmp_path}/p.jsonl",
                                           "--overlay", f"{s}/a/ov"],
        "predict --out = an input file": ["predict", "--checkpoint", c, f"{s}/c.png", "--out", f"{s}/c.png"],
        "predict --out inside input": ["predict", "--checkpoint", c, s, "--out", f"{s}/p.jsonl"],
        "predict --dicom-sr contains input": ["predict", "--checkpoint", c, f"{s}/a", "--out", f"{tmp_path}/p.jsonl",
                                              "--dicom-sr", s],
        "predict --overlay = checkpoint": ["predict", "--checkpoint", c, s, "--out", f"{tmp_path}/p.jsonl",
                                           "--overlay", c],
        "gradcam --out = input folder": ["gradcam", "--checkpoint", c, s, "--out", s],
        "gradcam --out contains input": ["gradcam", "--checkpoint", c, f"{s}/a/case.png", "--out", f"{s}/a"],
        "evaluate --out = data": ["evaluate", "--data", d, "--predictions", str(preds), "--out", d],
        "evaluate --out inside data": ["evaluate", "--data", d, "--predictions", str(preds), "--out", f"{d}/ev"],
        "evaluate --out contains predictions": ["evaluate", "--data", d, "--predictions", str(preds), "--out",
                                                str(tmp_path)],
        "evaluate --out inside checkpoint": ["evaluate", "--data", d, "--checkpoint", c, "--out", f"{c}/ev"],
        "prepare --out = images folder": ["prepare", "--source", "csv", "--input", f"{tmp_path}/t.csv",
                                          "--images-dir", s, "--out", s],
        "prepare --out inside images folder": ["prepare", "--source", "csv", "--input", f"{tmp_path}/t.csv",
                                               "--images-dir", s, "--out", f"{s}/prepared"],
        "prepare --out holds the images": ["prepare", "--source", "csv", "--input", f"{tmp_path}/t.csv", "--out", s],
    }


def test_every_command_refuses_an_output_that_is_inside_or_around_an_input(ckpt, scans, tmp_path, capsys):
    cases = _conflicts(ckpt, scans, tmp_path)
    (tmp_path / "t.csv").write_text("image_path,label,patient_id\n" + "".join(
        f"{p},normal,P{i}\n" for i, p in enumerate(sorted(scans.rglob("*.png")))))
    before = tree(tmp_path)
    for name, argv in cases.items():
        assert main(argv) == 2, name
        line = _one_error_line(capsys)
        assert any(w in line for w in ("same path as", "lies inside", "contains the input", "holds")), (name, line)
        assert tree(tmp_path) == before, name  # nothing written, no input touched


# -- item 4: streamed outputs; a failed write says what was saved --------------------------------------------------

def test_predict_on_a_full_disk_keeps_the_lines_written(ckpt, scans, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    main(["predict", "--checkpoint", str(ckpt), str(scans), "--out", str(tmp_path / "probe.jsonl"), "--no-progress"])
    sizes = [len(s) + 1 for s in (tmp_path / "probe.jsonl").read_text().splitlines()]
    capsys.readouterr()
    disk_full(monkeypatch, out_dir, budget=sizes[0] + sizes[1] + 10)  # two lines and a bit of the third
    assert main(["predict", "--checkpoint", str(ckpt), str(scans), "--out", str(out_dir / "p.jsonl"),
                 "--batch-size", "1", "--no-progress"]) == 2
    _one_error_line(capsys, "no space left", "stopped after 2 predictions were saved")
    monkeypatch.undo()
    kept = read_predictions(out_dir / "p.jsonl")  # complete lines only: the half-written third was cut
    assert list(kept.by_name) == [r["file_name"] for r in _lines(tmp_path / "probe.jsonl")][:2]


@pytest.mark.parametrize("mode", ["--out", "--overlay", "--exam"])
def test_predict_into_a_read_only_folder_is_one_line_and_leaves_nothing(ckpt, scans, tmp_path, capsys,
                                                                        monkeypatch, mode):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = str(tmp_path / "p.jsonl") if mode == "--overlay" else str(ro / "p.jsonl")
    extra = {"--out": [], "--overlay": ["--overlay", str(ro / "ov")], "--exam": ["--exam"]}[mode]
    read_only(monkeypatch, ro)
    assert main(["predict", "--checkpoint", str(ckpt), str(scans), "--out", out, "--no-progress", *extra]) == 2
    line = _one_error_line(capsys, "read-only file system")
    if mode == "--overlay":
        assert "stopped after 0 overlays were saved" in line and "no predictions were saved" in line
    monkeypatch.undo()
    assert tree(ro) == {} and not (tmp_path / "p.jsonl").exists()


def test_exam_output_on_a_full_disk_keeps_whole_exams(ckpt, scans, tmp_path, capsys, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    disk_full(monkeypatch, out_dir, budget=1500)  # one exam's records, not two
    assert main(["predict", "--checkpoint", str(ckpt), str(scans), "--out", str(out_dir / "e.jsonl"), "--exam",
                 "--no-progress"]) == 2
    line = _one_error_line(capsys, "no space left", "exams were saved")
    monkeypatch.undo()
    n = int(line.split("stopped after ")[1].split()[0])
    exams = [r for r in _lines(out_dir / "e.jsonl") if r["record"] == "exam"]
    assert n >= 1 and len(exams) == n  # every saved exam is complete, down to its exam record


def test_dicom_sr_folder_that_fills_up_stops_with_the_counts(ckpt, tmp_path, capsys, monkeypatch):
    pytest.importorskip("highdicom")
    from mammodetr.data.synth import generate_dataset

    generate_dataset(tmp_path / "dcm", n_patients=1, image_size=(160, 128), fmt="dicom", seed=2, progress=False)
    sr = tmp_path / "sr"
    sr.mkdir()
    disk_full(monkeypatch, sr, budget=1)
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "dcm" / "images"), "--out",
                 str(tmp_path / "p.jsonl"), "--dicom-sr", str(sr), "--no-progress"]) == 2
    _one_error_line(capsys, "no space left", "stopped after 0 SRs were saved", "no predictions were saved")
    monkeypatch.undo()
    assert not (tmp_path / "p.jsonl").exists() and not [p for p in sr.rglob("*") if p.is_file()]


# -- item 9: every load path verifies the weights' SHA-256; --no-verify loads them anyway --------------------------

@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("flipped") / "best")
    flip_weight_byte(path / "model.safetensors")
    return path


def _load_paths(ckpt, scans, tmp_path, data, preds):
    c = str(ckpt)
    return {
        "predict": ["predict", "--checkpoint", c, str(scans / "c.png"), "--out", f"{tmp_path}/p.jsonl"],
        "evaluate --checkpoint": ["evaluate", "--data", str(data), "--checkpoint", c, "--out", f"{tmp_path}/ev",
                                  "--bootstrap", "0", "--no-report"],
        "evaluate --val-threshold-from": ["evaluate", "--data", str(data), "--predictions", str(preds), "--out",
                                          f"{tmp_path}/ev2", "--val-threshold-from", c, "--val-split", "test",
                                          "--bootstrap", "0", "--no-report"],
        "gradcam": ["gradcam", "--checkpoint", c, str(scans / "c.png"), "--out", f"{tmp_path}/cam"],
        "serve": ["serve", "--checkpoint", c],
        **({"export": ["export", "--checkpoint", c, "--out", f"{tmp_path}/m.onnx", "--no-check"]} if _HAS_ONNX else {}),
    }


@pytest.fixture
def load_paths(scans, tmp_path, monkeypatch):
    """Every command that loads a checkpoint, as a function of the checkpoint; ``serve`` stops before its server."""
    pytest.importorskip("starlette")
    monkeypatch.setattr("mammodetr.cli.serve.run_server", lambda viewer: None)
    data = make_prepared_dataset(tmp_path / "ds", n_patients=2, size_hw=(80, 60))
    preds = tmp_path / "given.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in ground_truth_predictions(data, np.random.default_rng(0))))
    return lambda ckpt: _load_paths(ckpt, scans, tmp_path, data, preds)


def test_a_flipped_weight_byte_is_refused_on_every_load_path(flipped, load_paths, capsys):
    for name, argv in load_paths(flipped).items():
        assert main(argv) == 2, name
        _one_error_line(capsys, "do not match the SHA-256", "--no-verify")
        assert main([*argv, "--no-verify"]) == 0, name  # hand-edited weights, on purpose
        capsys.readouterr()


# -- item 11: an inverted box is refused with file, line and box ----------------------------------------------------

def test_evaluate_refuses_an_inverted_box(tmp_path, capsys):
    data = make_prepared_dataset(tmp_path / "ds", n_patients=2, size_hw=(80, 60))
    rows = ground_truth_predictions(data, np.random.default_rng(0))
    rows[2]["boxes"][0] = [30.0, 10.0, 20.0, 25.0]  # x2 < x1
    preds = tmp_path / "p.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["evaluate", "--data", str(data), "--predictions", str(preds), "--out", str(tmp_path / "ev")]) == 2
    _one_error_line(capsys, f"{preds}:3", rows[2]["file_name"], "[30.0, 10.0, 20.0, 25.0]", "inverted")
    assert not (tmp_path / "ev").exists()


# -- item 12: doubtful inputs carry warnings --------------------------------------------------------------------------

def test_blank_tiny_and_colour_noise_images_carry_warnings(ckpt, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "odd"
    breast_png(folder / "normal.png", 0)
    Image.fromarray(np.zeros((120, 90), np.uint16)).save(folder / "blank.png")
    Image.fromarray(np.full((1, 1), 200, np.uint8)).save(folder / "one_pixel.png")
    rgb = (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(folder / "rgb_noise.png")
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out), "--no-progress"]) == 0
    codes = {r["file_name"].rsplit("/", 1)[1]: {w.split(":")[0] for w in r["warnings"]} for r in _lines(out)}
    assert codes["normal.png"] == set()
    assert codes["blank.png"] == {"blank_image", "no_breast_found"}
    assert codes["one_pixel.png"] == {"blank_image", "tiny_image", "no_breast_found"}
    assert "unusual_photometric" in codes["rgb_noise.png"]  # the crop may or may not find a "breast" in noise
    n_no_breast = sum("no_breast_found" in c for c in codes.values())
    stdout = capsys.readouterr().out
    assert (f"warnings: 2 blank_image, {n_no_breast} no_breast_found, 1 tiny_image, 1 unusual_photometric"
            in stdout)
    assert read_predictions(out).by_name[str(folder / "blank.png")].warnings[0].startswith("blank_image: ")


# -- item 14: read-only outputs of prepare, split, evaluate, gradcam -------------------------------------------------

def test_read_only_outputs_are_one_line_and_leave_nothing(ckpt, scans, tmp_path, capsys, monkeypatch):
    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(80, 60))
    (tmp_path / "t.csv").write_text("image_path,label,patient_id\n" + "".join(
        f"{p},normal,P{i}\n" for i, p in enumerate(sorted(scans.rglob("*.png")))))
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copytree(data, ro / "ds_copy")
    runs = {
        "prepare": ["prepare", "--source", "csv", "--input", str(tmp_path / "t.csv"), "--out", str(ro / "prep"),
                    "--workers", "1", "--no-progress"],
        "split": ["split", "--data", str(ro / "ds_copy")],
        "evaluate": ["evaluate", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(ro / "ev"),
                     "--bootstrap", "0"],
        "gradcam": ["gradcam", "--checkpoint", str(ckpt), str(scans), "--out", str(ro / "cam")],
    }
    before = tree(tmp_path)
    read_only(monkeypatch, ro)
    for name, argv in runs.items():
        assert main(argv) == 2, name
        _one_error_line(capsys, "read-only file system", str(ro))
    monkeypatch.undo()
    assert tree(tmp_path) == before


# -- item 17: files that are not images are counted ------------------------------------------------------------------

def test_files_that_are_not_images_are_counted_in_the_summary(ckpt, scans, tmp_path, capsys):
    from mammodetr.data.synth import generate_dataset

    (scans / "notes.txt").write_text("reading list")
    (scans / "README").write_text("not DICOM")
    generate_dataset(tmp_path / "dcm", n_patients=1, image_size=(160, 128), fmt="dicom", seed=2, progress=False)
    shutil.copy(sorted((tmp_path / "dcm" / "images").glob("*.dcm"))[0], scans / "IM0001")  # a DICOM, no suffix
    out = tmp_path / "p.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), str(scans), "--out", str(out), "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "4 predictions" in stdout
    assert "skipped 2 file(s) in the input folders that are not images (1 .txt, 1 no suffix, not DICOM)" in stdout
    assert str(scans / "IM0001") in {r["file_name"] for r in _lines(out)}


# -- pickle payloads in the checkpoint's weights, on every load path (--pretrained, --resume: test_outputs_train.py) --

def test_a_pickle_as_model_weights_is_refused_and_never_run(ckpt, load_paths, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    marker = tmp_path / "PAYLOAD_RAN"
    write_pickle_payload(bad / "model.safetensors", marker)
    before = tree(tmp_path)
    for name, argv in load_paths(bad).items():
        for extra in ([], ["--no-verify"]):  # not a checksum question: a pickle is never read
            assert main([*argv, *extra]) == 2, (name, extra)
            _one_error_line(capsys, str(bad))
    assert not marker.exists() and tree(tmp_path) == before  # nothing ran, nothing was written


def test_existing_outputs_are_refused_and_overwrite_moves_them_aside(ckpt, scans, tmp_path, capsys):
    out, ov = tmp_path / "p.jsonl", tmp_path / "ov"
    argv = ["predict", "--checkpoint", str(ckpt), str(scans), "--out", str(out), "--overlay", str(ov),
            "--no-progress"]
    assert main(argv) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    _one_error_line(capsys, "--out", "exists", "--overwrite")
    assert out.read_bytes() == first
    assert main([*argv, "--overwrite"]) == 0
    moved = sorted(p.name for p in tmp_path.iterdir() if ".replaced-" in p.name)
    assert len(moved) == 2 and moved[0].startswith("ov.replaced-") and moved[1].startswith("p.jsonl.replaced-")
    assert (tmp_path / moved[1]).read_bytes() == first and out.read_bytes() == first  # same model, same lines
    assert (tmp_path / moved[0] / "a" / "case.png").is_file()  # the earlier overlays, kept
