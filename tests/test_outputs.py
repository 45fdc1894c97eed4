"""outputs.py: where a command may write, moving aside instead of replacing, and streamed lines on a failing disk."""

import errno
import json
import os
from pathlib import Path

import pytest

from mammodetr.outputs import (
    LineWriter,
    OutputConflictError,
    OutputWriteError,
    check_fresh,
    check_separate,
    claim_outputs,
    count_within,
    mirrored_paths,
    move_aside,
)


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "a.png").write_bytes(b"png")
    (tmp_path / "elsewhere").mkdir()
    return tmp_path


@pytest.mark.parametrize("out, message", [
    ("in", "same path as the input"),
    ("in/sub/ov", "lies inside the input folder"),
    (".", "contains the input"),
    ("in/a.png", "same path as the input"),
    ("elsewhere/../in/sub", "lies inside the input folder"),
    ("link_to_in/x", "lies inside the input folder"),
    ("hardlink.png", "same path as the input"),
])
def test_outputs_on_or_around_an_input_are_refused(tree, monkeypatch, out, message):
    monkeypatch.chdir(tree)
    os.symlink(tree / "in", tree / "link_to_in")
    os.link(tree / "in" / "a.png", tree / "hardlink.png")
    inputs = {"": "in"} if "png" not in out else {"": "in/a.png"}
    with pytest.raises(OutputConflictError, match=message):
        check_separate({"--out": out}, inputs)


def test_outputs_beside_the_inputs_are_fine(tree, monkeypatch):
    monkeypatch.chdir(tree)
    check_separate({"--out": "elsewhere/p.jsonl", "--overlay": "ov", "--skip": None}, [("", "in"), ("--x", None)])
    check_separate({"--out": "in2"}, {"": "in"})  # a name that starts like the input is not inside it


def test_existing_outputs_are_refused_and_overwrite_moves_them_aside(tree):
    out = tree / "elsewhere"
    assert check_fresh(out, overwrite=False) is False  # an empty folder is free
    (out / "old.json").write_text("{}")
    with pytest.raises(OutputConflictError, match="not empty: pass --resume to continue it, --overwrite"):
        check_fresh(out, overwrite=False, hint="--resume to continue it, ")
    assert claim_outputs({"--out": out}, {"": tree / "in"}, overwrite=True) == [out]
    with pytest.raises(OutputConflictError, match="--out and --overlay are the same path"):
        claim_outputs({"--out": tree / "o", "--overlay": tree / "x" / ".." / "o"}, {}, overwrite=False)
    first, second = move_aside(out), None
    out.mkdir()
    (out / "new").write_text("")
    second = move_aside(out)
    assert first != second and first.name.startswith("elsewhere.replaced-")
    assert (first / "old.json").read_text() == "{}" and (second / "new").exists() and not out.exists()


def test_mirrored_paths_follow_the_inputs_below_their_common_folder(tmp_path):
    files = [tmp_path / "a" / "case.dcm", tmp_path / "b" / "case.dcm", tmp_path / "b" / "Case.DCM"]
    assert mirrored_paths(files, "ov", "_x.png", {".dcm"}) == [
        Path("ov") / p for p in ("a/case_x.png", "b/case_x.png", "b/Case-2_x.png")]  # case-insensitive disks too
    assert mirrored_paths([tmp_path / "one.png"], "ov", ".png", {".png"}) == [Path("ov/one.png")]
    assert mirrored_paths([], "ov", ".png") == []


def test_count_within_compares_paths_without_reading_the_disk(tmp_path):
    paths = [tmp_path / "imgs" / "a.dcm", tmp_path / "imgs2" / "b.dcm", tmp_path / "imgs" / "x" / "c.dcm"]
    assert count_within(paths, tmp_path / "imgs") == 2
    assert count_within(paths, tmp_path / "nothing") == 0


class _FailAfter:
    """A text file that takes ``n`` writes, then writes half of the next one and fails with ENOSPC."""

    def __init__(self, f, n):
        self.f, self.n = f, n

    def write(self, text):
        if self.n == 0:
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self.n -= 1
        return self.f.write(text)

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_line_writer_keeps_complete_lines_and_cuts_a_half_written_one(tmp_path, monkeypatch):
    path = tmp_path / "p.jsonl"
    real_open = type(path).open
    monkeypatch.setattr(type(path), "open", lambda self, *a, **k: _FailAfter(real_open(self, *a, **k), 2))
    with pytest.raises(OutputWriteError, match="no space left on the device.*stopped after 2 lines were saved"):
        with LineWriter(path) as w:
            for i in range(5):
                w.write(json.dumps({"i": i}) + "\n")
    monkeypatch.undo()
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [0, 1]


def test_line_writer_removes_an_empty_file_and_adds_its_count_to_another_outputs_failure(tmp_path):
    path = tmp_path / "p.jsonl"
    with pytest.raises(OutputWriteError, match="overlay.png: cannot be written; no predictions were saved"):
        with LineWriter(path, "predictions"):
            raise OutputWriteError("overlay.png: cannot be written")
    assert not path.exists()
    with pytest.raises(OutputWriteError, match="; 1 predictions were saved in .*p.jsonl"):
        with LineWriter(path, "predictions") as w:
            w.write("{}\n")
            raise OutputWriteError("sr: cannot be written")
    assert path.read_text() == "{}\n"
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputWriteError, match="nothing was written"):
        with LineWriter(tmp_path / "file" / "x.jsonl"):
            pass
