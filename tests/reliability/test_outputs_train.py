"""Reliability, output side (issue 10): train and its checkpoints as a careless or hostile user would run them.

An existing run is never replaced by accident, a full or read-only disk is one line with the earlier checkpoints
intact, a kill -9 in the middle of a checkpoint write resumes, every weight file is verified, and no pickle is
ever run. Items of the issue are named per test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mammodetr.checkpoint import load_model, read_checkpoint
from mammodetr.cli import main
from tests.reliability._outputs_fs import flip_weight_byte, read_only, tree, write_pickle_payload
from tests.training.conftest import TINY_MODEL

FAST = ["--max-steps-per-epoch", "1"]
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """synth (PNG) -> prepare -> split: 6 patients x 4 views, 128 x 104 px."""
    root = tmp_path_factory.mktemp("data")
    assert main(["synth", "--out", str(root / "raw"), "--patients", "6", "--size", "128", "104", "--format", "png",
                 "--seed", "1", "--no-progress"]) == 0
    assert main(["prepare", "--source", "csv", "--input", str(root / "raw" / "table.csv"), "--out",
                 str(root / "ds"), "--workers", "1", "--no-progress"]) == 0
    assert main(["split", "--data", str(root / "ds"), "--seed", "0", "--fractions", "0.5", "0.25", "0.25"]) == 0
    return root / "ds"


def _train_args(data, out, *extra) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *TINY_MODEL, *FAST, *extra]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A finished one-epoch run (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(_train_args(dataset, run, "--epochs", "1")) == 0
    return run


@pytest.fixture
def run_copy(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.strip() and " WARNING " not in line and " INFO " not in line]
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("mammodetr train: "), err
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    return lines[0]


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- item 1: an existing run is refused unless --resume or --overwrite; --overwrite moves it aside --------------------

def test_an_existing_run_is_refused_and_overwrite_moves_it_aside(dataset, run_copy, capsys):
    before = tree(run_copy)
    assert main(_train_args(dataset, run_copy, "--epochs", "1")) == 2
    _one_error_line(capsys, str(run_copy), "not empty", "--resume", "--overwrite")
    assert tree(run_copy) == before
    assert main(_train_args(dataset, run_copy, "--epochs", "1", "--resume", str(run_copy), "--overwrite")) == 2
    _one_error_line(capsys, "--resume", "--overwrite")
    assert main(_train_args(dataset, run_copy, "--epochs", "1", "--overwrite")) == 0
    aside = [p for p in run_copy.parent.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and tree(aside[0]) == before  # the earlier run, whole
    assert _epochs(run_copy) == [1] and read_checkpoint(run_copy).meta["epoch"] == 1


def test_a_run_folder_is_never_the_dataset_or_around_it(dataset, tmp_path, capsys):
    before = tree(dataset.parent)
    for out in (dataset, dataset / "run", dataset.parent):
        assert main(_train_args(dataset, out, "--epochs", "1", "--overwrite")) == 2, out
        _one_error_line(capsys, "--data")
    assert tree(dataset.parent) == before  # --overwrite moved nothing


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "keep.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["keep.txt"]


# -- item 5: disk full while saving a checkpoint ------------------------------------------------------------------

def _full_safetensors(state, path, **kwargs):
    from safetensors import SafetensorError

    Path(path).write_bytes(b"")  # what a full disk leaves: an empty file
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _full_torch_save(obj, f, *args, **kwargs):
    Path(f).write_bytes(b"PK")
    raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")


@pytest.mark.parametrize("writer", ["safetensors", "torch.save"])
def test_disk_full_during_training_is_one_line_and_keeps_the_checkpoints(run_copy, capsys, monkeypatch, writer):
    ckpts = run_copy / "checkpoints"
    before = tree(ckpts)
    if writer == "safetensors":
        monkeypatch.setattr("mammodetr.checkpoint.save_file", _full_safetensors)
    else:
        monkeypatch.setattr("mammodetr.checkpoint.torch.save", _full_torch_save)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"]) == 2
    _one_error_line(capsys, str(ckpts), "cannot be written", "unchanged", "--resume")
    monkeypatch.undo()
    after = tree(ckpts)
    assert set(after) == set(before)  # no best.tmp / last.tmp / *.old left behind
    assert {k: v for k, v in after.items() if k.startswith("last")} == {
        k: v for k, v in before.items() if k.startswith("last")}  # the failed save left `last` as it was
    # `best` is written before `last` (and without a trainer state): when epoch 2 improved, the torch.save case
    # has a new, whole `best`; otherwise it is the one from before. Either way it loads and verifies.
    assert read_checkpoint(ckpts / "best").meta["epoch"] in (1, 2)
    if writer == "safetensors":
        assert after == before
    load_model(ckpts / "best")
    assert _epochs(run_copy) == [1]
    load_model(run_copy)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"]) == 0  # once there is space
    assert _epochs(run_copy) == [1, 2]


# -- item 9: resuming verifies the weights' SHA-256 ----------------------------------------------------------------

def test_resume_refuses_a_flipped_weight_byte_unless_no_verify(run_copy, capsys):
    flip_weight_byte(run_copy / "checkpoints" / "last" / "model.safetensors")
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    _one_error_line(capsys, "do not match the SHA-256", "--no-verify")
    assert main(["train", "--resume", str(run_copy), "--no-progress", "--no-verify"]) == 0


# -- item 14: one line, exit 2, nothing left behind ----------------------------------------------------------------

def test_missing_dataset_leaves_no_run_folder(tmp_path, capsys):
    assert main(_train_args(tmp_path / "nonexistent", tmp_path / "run", "--epochs", "1")) == 2
    _one_error_line(capsys, "nonexistent")
    assert not (tmp_path / "run").exists()


def test_resume_of_a_run_without_a_checkpoint_is_one_line(run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    before = tree(run_copy)
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 2
    _one_error_line(capsys, "nothing to resume", "--overwrite")
    assert tree(run_copy) == before


def test_read_only_run_folder_is_one_line(dataset, run_copy, tmp_path, capsys, monkeypatch):
    (tmp_path / "ro").mkdir()
    before = tree(tmp_path)
    read_only(monkeypatch, tmp_path / "ro")
    assert main(_train_args(dataset, tmp_path / "ro" / "run", "--epochs", "1")) == 2
    _one_error_line(capsys, "read-only file system", str(tmp_path / "ro"))
    read_only(monkeypatch, run_copy)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"]) == 2
    _one_error_line(capsys, "read-only file system", str(run_copy))
    monkeypatch.undo()
    assert tree(tmp_path) == before


def test_pickle_payloads_are_refused_in_every_train_load_path(dataset, run_copy, tmp_path, capsys):
    marker = tmp_path / "PAYLOAD_RAN"
    payload = write_pickle_payload(tmp_path / "backbone.pth", marker)
    args = _train_args(dataset, tmp_path / "new", "--epochs", "1")
    args[args.index("--pretrained") + 1] = str(payload)
    assert main(args) == 2  # --pretrained
    _one_error_line(capsys, str(payload), "refused")
    assert not (tmp_path / "new").exists()
    write_pickle_payload(run_copy / "checkpoints" / "last" / "training_state.pt", marker, wrap=None)
    before = tree(run_copy)
    assert main(["train", "--resume", str(run_copy), "--epochs", "2", "--no-progress"]) == 2  # --resume
    _one_error_line(capsys, "training_state.pt", "refused")
    assert tree(run_copy) == before and not marker.exists()


# -- kill -9 in the middle of a checkpoint write, then --resume ------------------------------------------------------

_KILLER = r"""
import os, signal, sys
import mammodetr.checkpoint as ckpt
point = sys.argv.pop(1)
real_save, real_replace = ckpt.save_file, os.replace
seen = {"last_writes": 0}

def save_file(state, path, **kwargs):
    if path.endswith(os.path.join("last.tmp", "model.safetensors")):
        seen["last_writes"] += 1
        if point == "write" and seen["last_writes"] == 2:  # epoch 2's last: half a file, then the kill
            with open(path, "wb") as f:
                f.write(b"\0" * 64)
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(state, path, **kwargs)

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if point == "rename" and str(dst).endswith("last.old"):  # the old last moved away, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)

ckpt.save_file, os.replace = save_file, replace
from mammodetr.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("point", ["write", "rename"])
def test_kill_9_during_a_checkpoint_write_resumes(dataset, tmp_path, point):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _KILLER, point, *_train_args(dataset, run, "--epochs", "2")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = run / "checkpoints"
    assert (ckpts / ("last.tmp" if point == "write" else "last.old")).is_dir()
    assert read_checkpoint(ckpts / "last").meta["epoch"] == 1  # the previous last, found even mid-rename
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _epochs(run) == [1, 2] and read_checkpoint(ckpts / "last").meta["epoch"] == 2
    assert sorted(p.name for p in ckpts.iterdir()) == ["best", "last"]
