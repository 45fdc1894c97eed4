"""Reliability suite, ``prepare``: nothing lost when the disk fills up, no identifier in the dataset folder, no
silent duplicate (issue 10, items 5, 6, 8 and 10).

The datasets are a few 120 x 90 PNGs written here; the id key always comes from the test's own private HOME
(tests/conftest.py) or an explicit file, never from the real ``~/.config``.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import hmac
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammodetr.cli import main as cli_main
from mammodetr.data import prepare as prepare_module
from mammodetr.data.converters import convert
from mammodetr.data.id_key import ENV_VAR, IdKey, default_key_path, load_id_key
from mammodetr.data.prepare import PrepareStopped, prepare_dataset
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.split import assign_splits, split_dataset

H, W = 120, 90
PATIENTS = ("MRN-100234", "MRN-100235", "MRN-100236")
FIELDS = ["image_path", "patient_id", "label", "laterality", "study_id", "x1", "y1", "x2", "y2"]


def _breast_png(path: Path, shift: int = 0) -> None:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W), np.float32)
    img[(xx / 60.0) ** 2 + ((yy - 60) / 50.0) ** 2 < 1] = 0.4
    img[50 + shift % 20: 62 + shift % 20, 20:32] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img * 65535 + 0.5).astype(np.uint16)).save(path)


@pytest.fixture()
def raw(tmp_path) -> Path:
    """Six images in folders named after the patient, as hospital exports do; returns the CSV."""
    root = tmp_path / "export"
    rows = []
    for i in range(6):
        pid = PATIENTS[i // 2]
        rel = f"{pid}_DOE^JANE/{pid}_{'LR'[i % 2]}CC.png"
        _breast_png(root / rel, shift=i)
        label = ("normal", "benign", "malignant")[i % 3]
        box = ["", "", "", ""] if label == "normal" else [20, 50 + i % 20, 32, 62 + i % 20]
        rows.append([rel, pid, label, "L", f"ACC-{pid}", *box])
    rows.append([f"{PATIENTS[0]}_DOE^JANE/missing.png", PATIENTS[0], "normal", "L", "", "", "", "", ""])
    with open(root / "table.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(FIELDS)
        w.writerows(rows)
    return root / "table.csv"


def _key(tmp_path: Path, name: str = "site.key") -> IdKey:
    return load_id_key(tmp_path / "keys" / name)


def _prepare(raw: Path, out: Path, key: IdKey, **kwargs) -> dict:
    lines: list[str] = []
    kwargs.setdefault("workers", 0)
    report = prepare_dataset(convert("csv", raw), out, PrepareOptions(max_side=60), progress=False, log=lines.append,
                             id_key=key, **kwargs)
    report["_lines"] = lines
    return report


def _folder_text(out: Path) -> str:
    """Every file name and every text file of a dataset folder, as one string."""
    parts = []
    for p in sorted(out.rglob("*")):
        parts.append(str(p.relative_to(out)))
        if p.is_file() and p.suffix in (".json", ".jsonl", ".md", ".txt", ".csv"):
            parts.append(p.read_text())
    return "\n".join(parts)


def _strings(obj) -> set[str]:
    if isinstance(obj, dict):
        return {s for k, v in obj.items() for s in (_strings(k) | _strings(v))}
    if isinstance(obj, list):
        return {s for v in obj for s in _strings(v)}
    return {str(obj)} if obj is not None else set()


# --- 6: pseudonyms are keyed, and the key never travels with the dataset -----------------------------------------

def test_6_a_shared_dataset_folder_cannot_be_brute_forced_back_to_patient_ids(raw, tmp_path):
    key = _key(tmp_path)
    out = tmp_path / "ds"
    _prepare(raw, out, key)
    ann = json.loads((out / "annotations.json").read_text())
    stored = {img["patient_id"] for img in ann["images"]}
    assert stored == {key.pseudonym("patient", p) for p in PATIENTS}  # the key holder gets them back
    state = json.loads((out / "prepare_state.json").read_text())
    assert "salt" not in state and state["id_key_fingerprint"] == key.fingerprint

    # Everything an attacker holding only the folder can try as the secret: every stored string, the file names.
    candidates = set()
    for p in out.rglob("*"):
        candidates.add(p.name)
        if p.suffix == ".json":
            candidates |= _strings(json.loads(p.read_text()))
    assert key.secret.decode() not in candidates
    guesses = [f"MRN-{n:06d}" for n in range(100_000, 100_400)]  # the site's id space, with the real ones in it
    for secret in candidates:
        for pid in guesses:
            for text in (f"{secret}\x00patient\x00{pid}", pid, f"{secret}{pid}"):  # the old salted scheme, plain
                digest = hashlib.sha256(text.encode()).hexdigest()[:16]
                assert f"p_{digest}" not in stored
            keyed = hmac.new(secret.encode(), f"patient\x00{pid}".encode(), hashlib.sha256).hexdigest()[:16]
            assert f"p_{keyed}" not in stored
    # and the ids, names and accession numbers are nowhere in the folder
    text = _folder_text(out)
    for secret in (*PATIENTS, "DOE", "JANE", "ACC-"):
        assert secret not in text


def test_6_the_same_key_gives_the_same_pseudonyms_in_every_run_and_folder(raw, tmp_path):
    key = _key(tmp_path)
    _prepare(raw, tmp_path / "a", key)
    _prepare(raw, tmp_path / "b", load_id_key(key.path))  # a later run of the same site
    _prepare(raw, tmp_path / "c", _key(tmp_path, "other.key"))

    def ids(name):
        ann = json.loads((tmp_path / name / "annotations.json").read_text())
        return sorted((img["patient_id"], img["study_id"]) for img in ann["images"])

    assert ids("a") == ids("b") and not set(ids("a")) & set(ids("c"))


def test_6_the_key_file_is_private_and_made_once(tmp_path, monkeypatch):
    assert "mammodetr-test-home-" in os.environ["HOME"]  # tests never see the real ~/.config
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert default_key_path() == home / ".config" / "mammodetr" / "id.key"
    first = load_id_key()
    assert first.created and first.path == default_key_path()
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.path.parent.stat().st_mode) == 0o700
    again = load_id_key()
    assert not again.created and again.secret == first.secret and again.fingerprint == first.fingerprint
    assert len(first.secret) == 64 and first.secret.decode() not in repr(first)
    monkeypatch.setenv(ENV_VAR, "k" * 40)
    from_env = load_id_key()
    assert from_env.path is None and from_env.secret == b"k" * 40 and from_env.fingerprint != first.fingerprint
    monkeypatch.setenv(ENV_VAR, "short")
    with pytest.raises(ValueError, match="at least 32 characters"):
        load_id_key()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.key")
        with pytest.raises(ValueError, match="regular file"):
            load_id_key(tmp_path / "fifo.key")


def test_6_another_key_is_refused_in_one_line_and_rekey_renames_everything(raw, tmp_path, capsys):
    key_a, key_b = _key(tmp_path, "a.key"), _key(tmp_path, "b.key")
    out = tmp_path / "ds"
    _prepare(raw, out, key_a)
    split_dataset(out, seed=1)
    before = json.loads((out / "annotations.json").read_text())
    old_names = {p.name for p in (out / "images").iterdir()}
    with pytest.raises(ValueError, match="prepared with another id key") as e:
        _prepare(raw, out, key_b)
    assert "\n" not in str(e.value) and key_b.fingerprint in str(e.value)
    assert json.loads((out / "annotations.json").read_text()) == before  # refused before touching anything
    rc = cli_main(["prepare", "--source", "csv", "--input", str(raw), "--out", str(out), "--id-key", str(key_b.path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--rekey" in err

    report = _prepare(raw, out, key_b, rekey=True)
    after = json.loads((out / "annotations.json").read_text())
    assert report["rekeyed"] and report["images_prepared_this_run"] == 6
    assert {p.name for p in (out / "images").iterdir()} & old_names == set()  # no image left under an old name
    assert {img["patient_id"] for img in after["images"]} == {key_b.pseudonym("patient", p) for p in PATIENTS}
    by_digest = {img["source_digest"]: img["split"] for img in before["images"]}
    assert {img["source_digest"]: img["split"] for img in after["images"]} == by_digest  # the split is kept


def test_6_a_dataset_with_a_stored_salt_is_refused_then_migrated(raw, tmp_path):
    key = _key(tmp_path)
    out = tmp_path / "ds"
    _prepare(raw, out, key)
    # What an older mammodetr left: the salt in the state, source paths in the annotations, no key fingerprint.
    state = json.loads((out / "prepare_state.json").read_text())
    legacy_state = {"salt": "0f" * 16, "images": state["images"]}
    (out / "prepare_state.json").write_text(json.dumps(legacy_state))
    ann = json.loads((out / "annotations.json").read_text())
    ann["info"].pop("id_key_fingerprint")
    for img in ann["images"]:
        img["source"], img["split"] = "old/path.png", "val"
    (out / "annotations.json").write_text(json.dumps(ann))
    with pytest.raises(ValueError, match="kept its id salt") as e:
        _prepare(raw, out, key)
    assert "--rekey" in str(e.value)
    report = _prepare(raw, out, key, rekey=True)
    assert report["rekeyed"] and "salt" not in json.loads((out / "prepare_state.json").read_text())
    assert "old/path.png" not in _folder_text(out)


def test_6_key_and_source_map_are_refused_inside_the_dataset_folder(raw, tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(ValueError, match="id key must not be inside the dataset folder"):
        _prepare(raw, out, load_id_key(out / "id.key"))
    with pytest.raises(ValueError, match="source map must not be inside the dataset folder"):
        _prepare(raw, out, _key(tmp_path), source_map=out / "map.json")


# --- 8: source paths are keyed hashes in the dataset; the way back is a private file outside it --------------------

def test_8_paths_naming_patients_stay_out_of_the_dataset_and_the_source_map_leads_back(raw, tmp_path, capsys):
    key = _key(tmp_path)
    out = tmp_path / "ds"
    rc = cli_main(["prepare", "--source", "csv", "--input", str(raw), "--out", str(out), "--id-key", str(key.path),
                   "--workers", "1", "--no-progress", "--max-side", "60"])
    captured = capsys.readouterr()
    assert rc == 0 and "missing.png: image file not found" in captured.err  # the operator still sees the path
    text = _folder_text(out)
    for secret in (*PATIENTS, "DOE", "JANE", "missing.png", str(raw.parent)):
        assert secret not in text, secret
    report = json.loads((out / "prepare_report.json").read_text())
    map_path = Path(report["source_map"])
    assert map_path.parent == key.path.parent / "source-maps" and str(map_path) in captured.out
    assert stat.S_IMODE(map_path.stat().st_mode) == 0o600 and not map_path.is_relative_to(out)
    sources = json.loads(map_path.read_text())["sources"]
    ann = json.loads((out / "annotations.json").read_text())
    back = sorted(sources[img["source"]] for img in ann["images"])
    assert back == sorted(str(p.relative_to(raw.parent)) for p in raw.parent.rglob("*.png"))
    missing = [p for p in report["problems"] if p["problem"] == "image file not found"]
    assert len(missing) == 1 and sources[missing[0]["file"]].endswith("missing.png")


def test_8_split_stays_deterministic_and_independent_of_the_key(tmp_path):
    root = tmp_path / "export"
    rows = ["image_path,patient_id,label"]
    for i in range(24):
        _breast_png(root / f"P{i // 2:03d}" / f"{i}.png", shift=i)
        rows.append(f"P{i // 2:03d}/{i}.png,MRN-{i // 2:05d},{('normal', 'benign', 'malignant')[(i // 2) % 3]}")
    (root / "t.csv").write_text("\n".join(rows) + "\n")
    splits = []
    for name in ("a", "b"):
        out = tmp_path / name
        _prepare(root / "t.csv", out, _key(tmp_path, f"{name}.key"))
        split_dataset(out, seed=4)
        ann = json.loads((out / "annotations.json").read_text())
        splits.append({img["source_digest"]: img["split"] for img in ann["images"]})
        again, _ = assign_splits(list(reversed(ann["images"])), seed=4)  # the order of the records does not matter
        assert again == {img["id"]: img["split"] for img in ann["images"]}
    assert splits[0] == splits[1] and set(splits[0].values()) == {"train", "val", "test"}


# --- 5: disk full during prepare: one line, no temporary file, the finished images kept and reused ---------------

def _fill_disk_after_one_png(monkeypatch, flag: Path) -> None:
    """From the second PNG on, the temporary file gets half its bytes and then ENOSPC, as on a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".") and ".png." in self.name and self.name.endswith(".tmp"):
            if flag.exists():
                with open(self, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = real(self, data)
            flag.touch()
            return written
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


@pytest.mark.parametrize("workers", [0, 2])
def test_5_disk_full_keeps_what_was_finished_and_a_rerun_resumes(raw, tmp_path, monkeypatch, workers):
    key, out = _key(tmp_path), tmp_path / "ds"
    _fill_disk_after_one_png(monkeypatch, tmp_path / "disk-full")
    with pytest.raises(PrepareStopped) as e:
        _prepare(raw, out, key, workers=workers)
    msg = str(e.value)
    assert "\n" not in msg and "No space left on device" in msg and "run the same command again" in msg
    assert not list(out.rglob("*.tmp"))
    ann = json.loads((out / "annotations.json").read_text())
    report = json.loads((out / "prepare_report.json").read_text())
    done = len(ann["images"])
    assert 1 <= done < 6 and report["images_prepared"] == done and report["images_not_prepared"] == 6 - done
    assert "No space left" in report["stopped"]
    assert len(json.loads((out / "prepare_state.json").read_text())["images"]) == done
    assert all((out / img["file_name"]).is_file() for img in ann["images"])

    monkeypatch.undo()
    again = _prepare(raw, out, key, workers=workers)
    assert again["images_reused_from_earlier_run"] == done and again["images_prepared_this_run"] == 6 - done
    assert again["images_prepared"] == 6 and again["stopped"] is None


def test_5_disk_full_on_the_annotations_keeps_the_state_for_the_rerun(raw, tmp_path, monkeypatch):
    key, out = _key(tmp_path), tmp_path / "ds"
    real = prepare_module.write_json

    def write_json(path, obj, indent=2):
        if Path(path).name == "annotations.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj, indent)

    monkeypatch.setattr(prepare_module, "write_json", write_json)
    with pytest.raises(PrepareStopped, match="recorded in prepare_state.json, so a re-run reuses them"):
        _prepare(raw, out, key)
    monkeypatch.undo()
    assert _prepare(raw, out, key)["images_reused_from_earlier_run"] == 6


def test_5_disk_full_in_the_cli_is_one_line(raw, tmp_path, monkeypatch, capsys):
    key = _key(tmp_path)
    _fill_disk_after_one_png(monkeypatch, tmp_path / "disk-full")
    rc = cli_main(["prepare", "--source", "csv", "--input", str(raw), "--out", str(tmp_path / "ds"), "--id-key",
                   str(key.path), "--workers", "0", "--no-progress"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("mammodetr prepare")]
    assert rc == 2 and len(err) == 1 and "stopped" in err[0] and "No space left on device" in err[0]


def test_5_an_interrupted_run_resumes_from_the_state_saved_while_running(raw, tmp_path, monkeypatch):
    key, out = _key(tmp_path), tmp_path / "ds"
    from mammodetr.data import prepare_jobs

    real, calls = prepare_jobs.prepare_one, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 4:
            raise KeyboardInterrupt  # as Ctrl-C, or a kill, in the middle of the run
        return real(job)

    monkeypatch.setattr(prepare_module, "STATE_SAVE_SECONDS", 0.0)
    monkeypatch.setattr(prepare_jobs, "prepare_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(raw, out, key)
    monkeypatch.undo()
    assert len(json.loads((out / "prepare_state.json").read_text())["images"]) == 3
    # what a kill -9 in the middle of an atomic write leaves: removed by the next run
    (out / "images" / f".{'0' * 20}.png.4242.tmp").write_bytes(b"half a png")
    (out / ".annotations.json.4242.tmp").write_text("{")
    assert _prepare(raw, out, key)["images_reused_from_earlier_run"] == 3
    assert not list(out.rglob("*.tmp"))


# --- 10: exact duplicate rows are dropped, said and counted ----------------------------------------------------------

def test_10_exact_duplicate_csv_rows_are_dropped_with_a_warning_and_counted(raw, tmp_path):
    lines = raw.read_text().splitlines()
    box_row = next(i for i, ln in enumerate(lines) if i and ln.split(",")[5])
    lines.insert(box_row + 1, lines[box_row] + "  ")  # the same row again (trailing blanks do not make it new)
    raw.write_text("\n".join(lines) + "\n")
    report = _prepare(raw, tmp_path / "ds", _key(tmp_path))
    assert report["duplicate_rows_dropped"] == 1 and report["boxes"] == 4
    dup = [ln for ln in report["_lines"] if "exact duplicate" in ln]
    assert dup == [f"table.csv row {box_row + 2}: exact duplicate of row {box_row + 1} (dropped duplicate row)"]


def test_10_duplicate_rows_of_vindr_and_cbis_tables_are_dropped_too(tmp_path):
    from mammodetr.data.converters.common import read_csv_rows

    table = tmp_path / "finding_annotations.csv"
    table.write_text("study_id,image_id,xmin\ns1,i1,10\ns1,i1,10\ns1,i1,11\n")
    problems = []
    rows = [row for _, _, row in read_csv_rows(table, ("study_id",), problems=problems)]
    assert [r["xmin"] for r in rows] == ["10", "11"] and [p.where for p in problems] == [f"{table.name} row 3"]
    assert [row for _, _, row in read_csv_rows(table, ("study_id",))] != rows  # without a problems list: all rows
