"""Reliability suite, inputs: every bad image file or table a careless or hostile user can give is one clear line,
never a hang, a traceback, a memory blow-up or a quoted DICOM value (issue 10; the outputs side is test_outputs*.py).

Each bad file is built here, a few KB at most. Items of issue 10 covered in this file: 7 (no DICOM value quoted),
13 (JPEG 2000 size checked before decoding), 15 (a corrupt codestream is one line), 16 (CSV encodings), 17 (frame
numbers, FIFOs and devices); and the cases that already passed before it, so none regresses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammodetr.cli import main as cli_main
from mammodetr.data.converters.common import read_csv_rows
from mammodetr.data.dicom_redact import NOT_SHOWN, foreign_text, shown
from mammodetr.data.io import ImageReadError, read_image
from mammodetr.data.jpeg2000 import read_siz
from mammodetr.data.synth import write_dicom
from mammodetr.models.weights import WeightsError, read_state_dict

pydicom = pytest.importorskip("pydicom")

from tests.data.dicom_builders import (  # noqa: E402
    ACCESSION,
    INSTITUTION,
    SECRETS,
    jpeg2000_dicom,
    make_ds,
    patch_siz,
    save,
    stored_values,
    with_raw_value,
)

SRC = Path(__file__).resolve().parents[2] / "src"
CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_0_1_0"


def refused(path: Path, *words: str, **kwargs) -> str:
    """Read ``path``: it must be refused with one line starting with the path, holding ``words`` and no secret."""
    with pytest.raises(ImageReadError) as e:
        read_image(path, **kwargs)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    assert not [s for s in (*SECRETS, INSTITUTION) if re.search(rf"\b{re.escape(s)}\b", msg, re.IGNORECASE)], msg
    return msg


def _has_j2k_encoder() -> bool:
    try:
        from pydicom.pixels import get_encoder
        from pydicom.uid import JPEG2000Lossless

        return get_encoder(JPEG2000Lossless).is_available
    except Exception:  # noqa: BLE001
        return False


needs_j2k = pytest.mark.skipif(not _has_j2k_encoder(), reason="needs pylibjpeg-openjpeg (mammodetr[dicom])")


# --- 7: a malformed technical tag holding an accession number or an institution name is never quoted -----------

MALFORMED = [  # (tag, a valid placeholder, the same-length value put in its place)
    ("NumberOfFrames", "12345678", ACCESSION),
    ("WindowCenter", "1234.5678", "MERCY GEN"),
    ("WindowWidth", "2345.6789", "ACC445566"),
    ("RescaleSlope", "1.00000000000000", "ST MARYS HOSPITL"),
    ("RescaleIntercept", "0.0000000000000", "ST MARYS HOSPIT"),
    ("PhotometricInterpretation", "MONOCHROME2", "ACC88997766"),
]


@pytest.mark.parametrize(("tag", "placeholder", "value"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_7_a_malformed_tag_value_is_never_quoted(tmp_path, tag, placeholder, value):
    p = with_raw_value(tmp_path / "bad.dcm", tag, placeholder, value)
    msg = refused(p, tag)
    assert value.lower() not in msg.lower() and value.split()[-1].lower() not in msg.lower()


@pytest.mark.parametrize(("tag", "placeholder", "value"), [
    ("ViewPosition", "XCCM", "AC12"), ("ImageLaterality", "ZZ", "A1"),
    ("VOILUTFunction", "LINEAR_EXACT", "ACC123456789")])
def test_7_identifier_like_values_of_descriptive_tags_stay_out_of_the_outputs(tmp_path, tag, placeholder, value):
    """ViewPosition and laterality reach annotations.json and predictions; only known values are passed on."""
    ds = make_ds(WindowCenter=2000.0, WindowWidth=4000.0)
    p = with_raw_value(tmp_path / "odd.dcm", tag, placeholder, value, ds)
    loaded = read_image(p)
    shown_text = json.dumps(loaded.meta) + str(loaded.view) + str(loaded.laterality)
    assert value not in shown_text and ACCESSION not in shown_text


def test_7_messages_and_outputs_of_prepare_predict_and_gradcam_quote_no_value(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    bad = [with_raw_value(raw / f"{tag}.dcm", tag, ph, value) for tag, ph, value in MALFORMED]
    good = save(raw, make_ds(stored_values(48, 40)), "good.dcm")
    rows = ["image_path,patient_id,label"] + [f"{p.name},PID-4711,normal" for p in (*bad, good)]
    (raw / "table.csv").write_text("\n".join(rows) + "\n")
    assert cli_main(["prepare", "--source", "csv", "--input", str(raw / "table.csv"), "--out", str(tmp_path / "ds"),
                     "--workers", "1", "--no-progress"]) == 0
    assert cli_main(["predict", "--checkpoint", str(CHECKPOINT), *map(str, bad), "--out",
                     str(tmp_path / "p.jsonl")]) == 1  # every input failed
    assert cli_main(["gradcam", "--checkpoint", str(CHECKPOINT), *map(str, bad), "--out", str(tmp_path / "cam")]) == 1
    captured = capsys.readouterr()
    texts = {"stderr": captured.err, "stdout": captured.out}
    for name in ("ds/prepare_report.json", "ds/annotations.json", "p.jsonl", "cam/gradcam.json"):
        texts[name] = (tmp_path / name).read_text()
    problems = json.loads(texts["ds/prepare_report.json"])["problems"]
    assert sum(p["action"] == "skipped image" for p in problems) == len(MALFORMED)
    assert texts["p.jsonl"].count('"error"') == len(MALFORMED) == texts["cam/gradcam.json"].count('"error"')
    for where, text in texts.items():
        for _, _, value in MALFORMED:
            assert value.lower() not in text.lower(), (where, value)
        assert "Traceback" not in text, where


def test_7_foreign_texts_lose_every_value_of_the_file(tmp_path):
    raw = save(tmp_path, make_ds()).read_bytes()
    text = foreign_text(ValueError(f"invalid literal for int() with base 10: '{ACCESSION}'"), raw)
    assert text == "ValueError: invalid literal for int() with base 10: '<value>'"
    unquoted = foreign_text(f"element holds {INSTITUTION} for Doe (not a number); 'Rows' is fine", raw)
    assert INSTITUTION not in unquoted and "Doe" not in unquoted and "'Rows'" in unquoted
    assert shown("Rows", 256) == "256" and shown("PhotometricInterpretation", "MONOCHROME1") == "MONOCHROME1"
    for keyword, value in (("NumberOfFrames", 20231234567), ("PhotometricInterpretation", ACCESSION),
                           ("TransferSyntaxUID", INSTITUTION), ("PatientName", "MONOCHROME2")):
        assert shown(keyword, value) == NOT_SHOWN


# --- 13: a JPEG 2000 codestream announcing more than the header says is refused before decoding ------------------

def _no_decoding(monkeypatch):
    import pydicom.pixels

    def boom(*args, **kwargs):
        raise AssertionError("the decoder must not run")

    monkeypatch.setattr(pydicom.pixels, "pixel_array", boom)


@needs_j2k
def test_13_codestream_of_20000_squared_behind_a_small_header_is_refused_unread(tmp_path, monkeypatch):
    p = patch_siz(jpeg2000_dicom(tmp_path / "bomb.dcm"), height=20000, width=20000)
    assert p.stat().st_size < 100_000 and read_siz(p.read_bytes()[p.read_bytes().index(b"\xff\x4f\xff\x51"):]).width \
        == 20000
    _no_decoding(monkeypatch)
    refused(p, "20000x20000", "max_pixels", "before decoding")


@needs_j2k
@pytest.mark.parametrize(("change", "words"), [
    ({"height": 65, "width": 48}, ("65x48", "Rows=64")),
    ({"components": 3}, ("corrupt JPEG 2000",)),
])
def test_13_codestream_disagreeing_with_the_header_is_refused_unread(tmp_path, monkeypatch, change, words):
    p = patch_siz(jpeg2000_dicom(tmp_path / "odd.dcm"), **change)
    _no_decoding(monkeypatch)
    refused(p, *words)


@needs_j2k
def test_13_an_honest_codestream_still_decodes(tmp_path):
    arr = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4000
    loaded = read_image(jpeg2000_dicom(tmp_path / "ok.dcm", arr))
    assert loaded.pixels.shape == (64, 48) and loaded.meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"


def test_13_siz_parser_reads_size_components_and_depth():
    siz = bytes.fromhex("ff4fff51") + (41).to_bytes(2, "big") + b"\x00\x00" + b"".join(
        v.to_bytes(4, "big") for v in (300, 200, 0, 0, 300, 200, 0, 0)) + (1).to_bytes(2, "big") + bytes([11, 1, 1])
    got = read_siz(siz)
    assert (got.width, got.height, got.components, got.bit_depths, got.signed) == (300, 200, 1, (12,), (False,))
    with pytest.raises(ValueError, match="no JPEG 2000 codestream"):
        read_siz(b"\x00" * 64)
    with pytest.raises(ValueError, match="truncated"):
        read_siz(siz[:20])


# --- 15: a corrupt JPEG 2000 file is one line, pydicom's ERROR lines and tracebacks only under --debug ------------

def _corrupt_j2k(path: Path) -> Path:
    raw = bytearray(jpeg2000_dicom(path).read_bytes())
    start = raw.index(b"\xff\x4f\xff\x51") + 100  # after the main header: the SIZ check passes, decoding fails
    for k in range(start, len(raw) - 10):
        raw[k] = (raw[k] * 31 + 7) & 0xFF
    path.write_bytes(bytes(raw))
    return path


@needs_j2k
def test_15_corrupt_jpeg2000_prints_nothing_but_the_one_line(tmp_path):
    p = _corrupt_j2k(tmp_path / "corrupt.dcm")
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING)\n"
            "from mammodetr.data.io import read_image, ImageReadError\n"
            "try:\n    read_image(sys.argv[1])\nexcept ImageReadError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, env=env, timeout=120)
    assert run.stderr == "" and run.stdout.count("\n") == 1 and "cannot decode pixel data" in run.stdout
    debug = subprocess.run([sys.executable, "-c", code.replace("logging.WARNING)", "logging.WARNING); logging."
                                                               "getLogger('mammodetr').setLevel(logging.DEBUG)"),
                            str(p)], capture_output=True, text=True, env=env, timeout=120)
    assert "DEBUG:mammodetr.data.dicom:pydicom ERROR: Error decoding the J2K data" in debug.stderr
    assert "Traceback" in debug.stderr  # the details are kept, for --debug


@needs_j2k
def test_15_predict_on_a_corrupt_jpeg2000_warns_once(tmp_path, capsys, caplog):
    p = _corrupt_j2k(tmp_path / "corrupt.dcm")
    with caplog.at_level(logging.DEBUG, logger="pydicom"):
        assert cli_main(["predict", "--checkpoint", str(CHECKPOINT), str(p), "--out", str(tmp_path / "p.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ERROR" not in err
    assert not [r for r in caplog.records if r.name.startswith("pydicom") and r.levelno >= logging.WARNING]
    warned = [r for r in caplog.records if r.name.startswith("mammodetr") and r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "cannot decode pixel data" in warned[0].getMessage()


# --- 16: a CSV that is not UTF-8 is one line naming the file, the line and the encoding to use ---------------------

CSV_TEXT = "image_path,patient_id,label\na.png,P1,normal\nb.png,Bérénice,benign\n"


@pytest.mark.parametrize(("data", "words"), [
    (CSV_TEXT.encode("latin-1"), ("line 3", "not UTF-8", "Windows-1252", "CSV UTF-8")),
    (CSV_TEXT.encode("utf-16"), ("line 1", "UTF-16LE", "save it as UTF-8")),
    (CSV_TEXT.encode("utf-16-le"), ("line 1", "UTF-16LE without a byte-order mark", "iconv -f UTF-16LE")),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" * 4, ("line 1", "binary data")),
], ids=["latin-1", "utf-16-bom", "utf-16-no-bom", "binary"])
def test_16_csv_in_another_encoding_is_one_line_with_file_line_and_encoding(tmp_path, capsys, data, words):
    table = tmp_path / "table.csv"
    table.write_bytes(data)
    with pytest.raises(ValueError) as e:
        list(read_csv_rows(table, ("image_path",)))
    msg = str(e.value)
    assert msg.startswith(f"{table} line ") and "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert cli_main(["prepare", "--source", "csv", "--input", str(table), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(table) in err and "codec can't decode" not in err


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"], ids=["utf-8", "utf-8-bom"])
def test_16_utf8_with_or_without_bom_is_read(tmp_path, bom):
    table = tmp_path / "t.csv"
    table.write_bytes(bom + CSV_TEXT.encode("utf-8"))
    rows = [row for _, _, row in read_csv_rows(table, ("image_path", "patient_id"))]
    assert [r["patient_id"] for r in rows] == ["P1", "Bérénice"]


# --- 17: frame numbers apply to multi-frame files; FIFOs and devices are named, never opened ----------------------

def _multi_frame(tmp_path: Path) -> Path:
    frames = np.stack([np.full((6, 5), 10 * (k + 1), np.uint16) for k in range(3)])
    frames[:, 0, 0] = 0
    ds = make_ds(frames[0])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<u2").tobytes()
    return save(tmp_path, ds, "multi.dcm")


def test_17_frame_1_applies_to_multi_frame_files_only(tmp_path):
    single_dcm = save(tmp_path, make_ds(), "single.dcm")
    single_png = tmp_path / "single.png"
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(8, 6)).save(single_png)
    for p in (single_dcm, single_png):
        np.testing.assert_array_equal(read_image(p, frame=1).pixels, read_image(p).pixels)
    assert read_image(_multi_frame(tmp_path), frame=1).meta["frame"] == 1
    refused(tmp_path / "multi.dcm", "out of range", frame=3)


def test_17_frame_1_prepares_a_mixed_dataset(tmp_path):
    _multi_frame(tmp_path)
    save(tmp_path, make_ds(stored_values(40, 32)), "single.dcm")
    (tmp_path / "t.csv").write_text("image_path,patient_id,label\nmulti.dcm,P1,normal\nsingle.dcm,P2,normal\n")
    assert cli_main(["prepare", "--source", "csv", "--input", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"),
                     "--frame", "1", "--workers", "1", "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "prepare_report.json").read_text())["images_prepared"] == 2


def test_17_negative_frame_is_refused_by_the_argument_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["prepare", "--source", "csv", "--input", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"),
                  "--frame", "-1"])
    assert e.value.code == 2 and "--frame: must be at least 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_17_fifo_and_device_link_are_named_and_never_opened(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.dcm")  # opening it for reading would block forever
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "loop.dcm").symlink_to(tmp_path / "loop.dcm")
    (tmp_path / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    refused(tmp_path / "pipe.dcm", "FIFO")
    refused(tmp_path / "zero.dcm", "character device")
    refused(tmp_path / "loop.dcm", "symbolic link loop")
    refused(tmp_path / "dangling.dcm", "broken symbolic link")
    from mammodetr.inference.inputs import collect_inputs

    with pytest.raises(ValueError, match="pipe.dcm: is a FIFO"):  # predict's explicit inputs
        collect_inputs([tmp_path / "pipe.dcm"])
    names = ("pipe", "zero", "loop", "dangling")
    (tmp_path / "t.csv").write_text("image_path,patient_id,label\n" + "".join(f"{n}.dcm,P1,normal\n" for n in names))
    assert cli_main(["prepare", "--source", "csv", "--input", str(tmp_path / "t.csv"), "--out", str(tmp_path / "o"),
                     "--workers", "1", "--no-progress"]) == 1  # nothing to prepare, each file named
    err = capsys.readouterr().err
    for name, what in zip(names, ("FIFO", "character device", "symbolic link loop", "broken symbolic link"),
                          strict=True):
        assert f"{name}.dcm: " in err and what in err.split(f"{name}.dcm: ")[1].splitlines()[0]
    assert "image file not found" not in err


# --- cases that passed before issue 10: they must keep passing --------------------------------------------------

def _dicom_cases(tmp_path: Path) -> list[tuple[Path, tuple[str, ...], dict]]:
    raw = save(tmp_path, make_ds(), "whole.dcm").read_bytes()
    (tmp_path / "zero.dcm").write_bytes(b"")
    (tmp_path / "truncated.dcm").write_bytes(raw[: len(raw) - 100])
    no_pixels = make_ds()
    del no_pixels.PixelData
    huge = make_ds()
    huge.Rows = huge.Columns = 60000
    j2k_garbage = make_ds()
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    j2k_garbage.file_meta.TransferSyntaxUID = JPEG2000Lossless
    j2k_garbage.PixelData = encapsulate([b"\xff\x4f\xff\x51" + os.urandom(30)])
    return [
        (tmp_path / "zero.dcm", ("empty file",), {}),
        (tmp_path / "truncated.dcm", ("truncated",), {}),
        (save(tmp_path, no_pixels, "nopixels.dcm"), ("missing required", "PixelData"), {}),
        (save(tmp_path, make_ds(BitsStored=20), "bits.dcm"), ("BitsStored=20", "BitsAllocated=16"), {}),
        (save(tmp_path, huge, "huge.dcm"), ("too large", "60000x60000"), {}),
        (write_dicom(tmp_path / "j2k.dcm", j2k_garbage), ("JPEG 2000",), {}),
        (save(tmp_path, make_ds(SamplesPerPixel=3, PhotometricInterpretation="RGB"), "rgb.dcm"), ("greyscale",), {}),
        (save(tmp_path, make_ds(PresentationIntentType="FOR PROCESSING"), "proc.dcm"), ("FOR PROCESSING",), {}),
        (_multi_frame(tmp_path), ("multi-frame", "3 frames"), {}),
    ]


def test_regressions_bad_dicoms_are_one_line_each(tmp_path):
    for path, words, kwargs in _dicom_cases(tmp_path):
        refused(path, *words, **kwargs)


def test_regressions_nan_and_inf_tiff_and_rgb_png(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        a = np.linspace(0, 2, 48, dtype=np.float32).reshape(8, 6)
        a[3, 3] = bad
        tifffile.imwrite(tmp_path / f"{name}.tif", a)
        refused(tmp_path / f"{name}.tif", "non-finite")
    rgb = np.zeros((8, 6, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png").pixels, 0.299, atol=0.003)  # luminance, not refused


def test_regressions_csv_problems_and_dot_dot_paths(tmp_path):
    (tmp_path / "t.csv").write_text("image_path,label\na.png,normal\n")
    with pytest.raises(ValueError, match="missing required column"):
        list(read_csv_rows(tmp_path / "t.csv", ("image_path", "patient_id")))
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="empty CSV"):
        list(read_csv_rows(tmp_path / "e.csv", ("image_path",)))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    Image.fromarray(np.full((40, 30), 200, np.uint8)).save(outside)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "t.csv").write_text(f"image_path,patient_id,label\n../../{outside.name},P1,normal\n"
                                            "../../missing.png,P2,normal\n")
    from mammodetr.data.converters import convert
    from mammodetr.data.prepare import prepare_dataset

    lines: list[str] = []
    report = prepare_dataset(convert("csv", tmp_path / "sub" / "t.csv"), tmp_path / "o", workers=0, progress=False,
                             log=lines.append)
    assert report["images_prepared"] == 1  # a path leaving the folder is the user's own file: read, never written
    assert any("missing.png" in ln and "image file not found" in ln for ln in lines)
    assert outside.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outside.unlink()


def test_regressions_pickle_payload_as_pretrained_weights_never_runs(tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"state_dict": Payload()}, tmp_path / "weights.pth")
    with pytest.raises(WeightsError) as e:
        read_state_dict(tmp_path / "weights.pth")
    assert "weights_only=True" in str(e.value) and "\n" not in str(e.value) and not marker.exists()
