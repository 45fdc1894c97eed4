"""DICOM reading: LUT order against hand computations and pydicom, refused and corrupt files, identifiers."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.pixels import apply_modality_lut as pd_modality  # noqa: E402
from pydicom.pixels import apply_voi_lut as pd_voi  # noqa: E402

from mammodetr.data.dicom import scrub_identifiers  # noqa: E402
from mammodetr.data.io import ImageReadError, read_image  # noqa: E402
from mammodetr.data.synth import write_dicom  # noqa: E402
from tests.data.dicom_builders import PID, SECRETS, make_ds, save, stored_values  # noqa: E402


def assert_error(path: Path, exc: ImageReadError, *words: str) -> None:
    msg = str(exc)
    assert msg.startswith(f"{path}: "), msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    for secret in SECRETS:
        assert secret.lower() not in msg.lower(), msg


# --- LUT order and values -------------------------------------------------------------------------------


def linear_ref(x: float, c: float, w: float) -> float:
    """PS3.3 C.11.2.1.2.1, written as the standard's if/else, y in [0, 1]."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return 1.0
    return (x - (c - 0.5)) / (w - 1) + 0.5


def linear_exact_ref(x: float, c: float, w: float) -> float:
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return 1.0
    return (x - c) / w + 0.5


def sigmoid_ref(x: float, c: float, w: float) -> float:
    return 1.0 / (1.0 + math.exp(-4.0 * (x - c) / w))


@pytest.mark.parametrize(
    ("function", "ref"), [("LINEAR", linear_ref), ("LINEAR_EXACT", linear_exact_ref), ("SIGMOID", sigmoid_ref)]
)
def test_window_functions_match_hand_computation_and_pydicom(tmp_path, function, ref):
    arr = stored_values()
    c, w = 1800.0, 1500.0
    ds = make_ds(arr, WindowCenter=c, WindowWidth=w, VOILUTFunction=function)
    got = read_image(save(tmp_path, ds)).pixels
    want = np.array([[ref(float(x), c, w) for x in row] for row in arr], dtype=np.float64)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # Independent reference: pydicom's windowing, which maps to [0, 2**BitsStored - 1].
    pd = pd_voi(arr.astype(np.float64), ds, prefer_lut=True) / (2**12 - 1)
    np.testing.assert_allclose(got, pd, atol=2e-6)
    assert 0 < (got == 0).sum() < got.size or function == "SIGMOID"


def test_rescale_then_window(tmp_path):
    arr = stored_values()
    slope, intercept, c, w = 2.0, -1000.0, 2500.0, 3000.0
    ds = make_ds(arr, RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=c, WindowWidth=w)
    got = read_image(save(tmp_path, ds)).pixels
    want = np.array([[linear_ref(slope * float(x) + intercept, c, w) for x in row] for row in arr])
    np.testing.assert_allclose(got, want, atol=2e-6)
    pd = pd_voi(pd_modality(arr, ds), ds)
    y_min, y_max = intercept, (2**12 - 1) * slope + intercept  # pydicom's output range after rescale
    np.testing.assert_allclose(got, (pd - y_min) / (y_max - y_min), atol=2e-6)


def test_monochrome1_is_inverted_after_the_window(tmp_path):
    arr = stored_values()
    c, w = 1000.0, 800.0  # asymmetric about the stored range: the two orders give different images
    ds = make_ds(arr, PhotometricInterpretation="MONOCHROME1", WindowCenter=c, WindowWidth=w)
    got = read_image(save(tmp_path, ds)).pixels
    right = np.array([[1.0 - linear_ref(float(x), c, w) for x in row] for row in arr])
    wrong = np.array([[linear_ref(float(4095 - x), c, w) for x in row] for row in arr])  # invert first
    np.testing.assert_allclose(got, right, atol=2e-6)
    assert np.abs(got - wrong).max() > 0.5


def test_monochrome1_without_window_is_inverted_minmax(tmp_path):
    arr = stored_values()
    ds = make_ds(arr, PhotometricInterpretation="MONOCHROME1")
    loaded = read_image(save(tmp_path, ds))
    want = 1.0 - (arr - arr.min()) / (arr.max() - arr.min())
    np.testing.assert_allclose(loaded.pixels, want, atol=2e-6)
    assert loaded.meta["voi_lut"] == "min-max" and loaded.meta["inverted"]


def voi_lut_item(first: int, data: list[int], bits: int, *, as_ow: bool) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(data), first, bits])
    if as_ow:  # the two encodings found in the wild: OW bytes and a US list
        item.add_new("LUTData", "OW", np.asarray(data, "<u2").tobytes())
    else:
        item.add_new("LUTData", "US", list(data))
    return item


def test_voi_lut_sequence_wins_over_window(tmp_path):
    arr = np.array([[0, 5, 10, 11], [12, 13, 14, 40]], dtype=np.uint16)
    lut = [0, 100, 400, 900, 1600, 2500]  # entries for stored 10..15; below clamps to first, above to last
    ds = make_ds(arr, WindowCenter=20.0, WindowWidth=10.0)
    ds.VOILUTSequence = [voi_lut_item(10, lut, 12, as_ow=True)]
    got = read_image(save(tmp_path, ds)).pixels
    want = np.array([[lut[min(max(int(x) - 10, 0), len(lut) - 1)] / 4095 for x in row] for row in arr])
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got, pd_voi(arr, ds) / 4095, atol=2e-6)


def test_modality_lut_sequence_then_minmax(tmp_path):
    arr = np.array([[0, 1, 2], [3, 4, 9]], dtype=np.uint16)
    data = [50, 60, 80, 110, 150]
    ds = make_ds(arr)
    ds.ModalityLUTSequence = [voi_lut_item(0, data, 16, as_ow=False)]
    got = read_image(save(tmp_path, ds)).pixels
    mapped = np.array([[data[min(int(x), 4)] for x in row] for row in arr], dtype=np.float64)
    np.testing.assert_allclose(mapped, pd_modality(arr, ds))
    np.testing.assert_allclose(got, (mapped - 50) / 100, atol=2e-6)


def test_signed_pixels_with_rescale(tmp_path):
    arr = np.array([[-1000, -10, 0], [5, 300, 2047]], dtype=np.int16)
    ds = make_ds(arr.view(np.uint16), PixelRepresentation=1, RescaleSlope=1.0, RescaleIntercept=24.0)
    got = read_image(save(tmp_path, ds)).pixels
    want = (arr.astype(np.float64) + 24 - (-976)) / (2071 - (-976))
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_invalid_window_falls_back_to_minmax(tmp_path):
    arr = stored_values()
    loaded = read_image(save(tmp_path, make_ds(arr, WindowCenter=100.0, WindowWidth=0.0)))
    np.testing.assert_allclose(loaded.pixels, arr / 4000.0, atol=2e-6)
    assert "window ignored" in loaded.meta["voi_lut"]


def test_tags_laterality_view_and_meta_without_identifiers(tmp_path):
    ds = make_ds()
    ds.Laterality = "R"  # series-level; ImageLaterality (L) takes precedence
    loaded = read_image(save(tmp_path, ds))
    assert (loaded.laterality, loaded.view) == ("L", "CC")
    assert loaded.meta["patient_orientation"] == ["A", "R"]
    del ds.ImageLaterality
    loaded = read_image(save(tmp_path, ds, "b.dcm"))
    assert loaded.laterality == "R"
    text = json.dumps(loaded.meta).lower()
    for secret in SECRETS:
        assert secret.lower() not in text
    assert loaded.pixels.dtype == np.float32 and loaded.meta["bits_stored"] == 12


def test_jpeg2000_lossless_roundtrip(tmp_path):
    arr = stored_values(64, 64)
    plain = read_image(save(tmp_path, make_ds(arr), "plain.dcm"))
    j2k = read_image(write_dicom(tmp_path / "j2k.dcm", make_ds(arr), jpeg2000=True))
    assert "2000" in j2k.meta["transfer_syntax_name"]
    np.testing.assert_array_equal(plain.pixels, j2k.pixels)


# --- bad input ------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.dcm"
    p.write_bytes(b"")
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "empty")


def test_not_a_dicom(tmp_path):
    p = tmp_path / "notes.dcm"
    p.write_text("patient list\n" * 20)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "not a DICOM")


def test_truncated_at_several_offsets(tmp_path):
    raw = save(tmp_path, make_ds()).read_bytes()
    pixel_start = len(raw) - 16 * 12 * 2
    for cut in (50, 131, 140, 300, pixel_start - 4, pixel_start + 1, pixel_start + 100, len(raw) - 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}.dcm"
        p.write_bytes(raw[:cut])
        with pytest.raises(ImageReadError) as e:
            read_image(p)
        assert_error(p, e.value)
        if cut >= pixel_start + 1:
            assert "truncated" in str(e.value)


def test_missing_pixel_data(tmp_path):
    ds = make_ds()
    del ds.PixelData
    p = save(tmp_path, ds)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "missing", "PixelData")


def test_missing_rows(tmp_path):
    ds = make_ds()
    del ds.Rows
    p = save(tmp_path, ds)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "missing", "Rows")


def test_bits_stored_above_bits_allocated(tmp_path):
    p = save(tmp_path, make_ds(BitsStored=17, HighBit=16))
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "BitsStored=17", "BitsAllocated=16")


def test_odd_length_pixel_data(tmp_path):
    arr = stored_values(4, 4)
    raw = bytearray(save(tmp_path, make_ds(arr)).read_bytes())
    # Explicit VR LE OW: tag(4) VR(2) reserved(2) length(4); make the value one byte longer (odd).
    i = raw.rfind(b"\xe0\x7f\x10\x00OW")
    length = int.from_bytes(raw[i + 8 : i + 12], "little")
    assert length == 32
    raw[i + 8 : i + 12] = (length + 1).to_bytes(4, "little")
    p = tmp_path / "odd.dcm"
    p.write_bytes(bytes(raw) + b"\x00")
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "odd-length")


def test_multiframe_refused_unless_frame_given(tmp_path):
    frames = np.stack([np.full((6, 5), 10 * (k + 1), np.uint16) for k in range(3)])
    frames[:, 0, 0] = 0
    ds = make_ds(frames[0])
    ds.NumberOfFrames = 3
    ds.PixelData = frames.astype("<u2").tobytes()
    p = save(tmp_path, ds)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "multi-frame", "3 frames")
    loaded = read_image(p, frame=1)
    want = (frames[1] - 0) / 20.0  # min-max of frame 1: 0 .. 20
    np.testing.assert_allclose(loaded.pixels, want, atol=1e-6)
    assert loaded.meta["frame"] == 1
    with pytest.raises(ImageReadError) as e:
        read_image(p, frame=3)
    assert_error(p, e.value, "out of range")


def test_for_processing_refused_unless_allowed(tmp_path):
    p = save(tmp_path, make_ds(PresentationIntentType="FOR PROCESSING"))
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "FOR PROCESSING", "allow_for_processing")
    loaded = read_image(p, allow_for_processing=True)
    assert loaded.meta["presentation_intent"] == "FOR PROCESSING"
    ds = make_ds(SOPClassUID="1.2.840.10008.5.1.4.1.1.1.2.1")  # the For Processing SOP class alone
    del ds.PresentationIntentType
    p2 = save(tmp_path, ds, "proc2.dcm")
    with pytest.raises(ImageReadError):
        read_image(p2)


def test_size_cap_checked_before_decoding(tmp_path):
    p = save(tmp_path, make_ds())
    with pytest.raises(ImageReadError) as e:
        read_image(p, max_pixels=100)
    assert_error(p, e.value, "too large", "max_pixels=100")


def test_colour_refused(tmp_path):
    p = save(tmp_path, make_ds(SamplesPerPixel=3, PhotometricInterpretation="RGB"))
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "greyscale")


def test_compressed_syntax_without_decoder_names_the_extra(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    ds = make_ds()
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 20])
    p = tmp_path / "jpegll.dcm"
    ds.save_as(p, enforce_file_format=True)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "dicom-extra", "pylibjpeg-libjpeg")


def test_identifiers_scrubbed_from_messages():
    ds = make_ds()
    with tempfile.TemporaryDirectory() as d:
        p = write_dicom(Path(d) / "x.dcm", ds)
        raw = p.read_bytes()
    text = f"value {PID} and DOE^JANET and janet"
    out = scrub_identifiers(text, raw)
    for secret in SECRETS:
        assert secret.lower() not in out.lower(), out
    assert out.count("<redacted>") == 3


_FUZZ_RAW: bytes | None = None


def _fuzz_base() -> bytes:
    global _FUZZ_RAW
    if _FUZZ_RAW is None:
        ds = make_ds(stored_values(8, 6), WindowCenter=1500.0, WindowWidth=2000.0)
        with tempfile.TemporaryDirectory() as d:
            _FUZZ_RAW = write_dicom(Path(d) / "f.dcm", ds).read_bytes()
    return _FUZZ_RAW


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(128, 2000), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_byte_flips_give_error_or_valid_image(flips):
    raw = bytearray(_fuzz_base())
    for pos, value in flips:
        raw[pos % len(raw)] = value
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.dcm"
        p.write_bytes(bytes(raw))
        try:
            loaded = read_image(p)
        except ImageReadError as exc:
            assert str(exc).startswith(str(p))
            for secret in SECRETS:
                assert secret.lower() not in str(exc).lower()
            return
    px = loaded.pixels
    assert px.dtype == np.float32 and px.ndim == 2
    assert np.isfinite(px).all() and px.min() >= 0.0 and px.max() <= 1.0
    assert all(s.lower() not in json.dumps(loaded.meta, default=str).lower() for s in SECRETS)


def test_unknown_transfer_syntax(tmp_path):
    ds = make_ds()
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    p = tmp_path / "ts.dcm"
    ds.save_as(p, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert_error(p, e.value, "unknown transfer syntax")


# --- header only and display values (the viewer) ----------------------------------------------------------

def test_read_dicom_tags_reads_the_header_without_the_pixels(tmp_path, monkeypatch):
    from mammodetr.data.dicom import read_dicom_tags

    ds = make_ds()
    ds.StudyInstanceUID = "1.2.3.4.5"
    path = save(tmp_path, ds)
    import pydicom.pixels

    monkeypatch.setattr(pydicom.pixels, "pixel_array", lambda *a, **k: pytest.fail("pixels decoded"))
    tags = read_dicom_tags(path)
    assert (tags.laterality, tags.view, tags.study_uid) == ("L", "CC", "1.2.3.4.5")
    assert (tags.rows, tags.columns, tags.frames, tags.patient_orientation) == (16, 12, 1, ("A", "R"))
    not_dicom = tmp_path / "x.dcm"
    not_dicom.write_text("hello")
    with pytest.raises(ImageReadError) as exc:
        read_dicom_tags(not_dicom)
    assert_error(not_dicom, exc.value, "not a DICOM file")


def test_read_dicom_values_windows_match_read_dicom(tmp_path):
    from mammodetr.data.dicom import read_dicom_values, window

    ds = make_ds(WindowCenter=[2000, 1000], WindowWidth=[1000, 500], WindowCenterWidthExplanation=["A", "B"])
    path = save(tmp_path, ds)
    values = read_dicom_values(path)
    assert [w.name for w in values.windows] == ["A", "B"]
    w = values.windows[0]
    np.testing.assert_allclose(window(values.values, w.center, w.width, w.function), read_image(path).pixels)
    mono1 = save(tmp_path, make_ds(PhotometricInterpretation="MONOCHROME1"), "m1.dcm")  # no window: min-max
    v1 = read_dicom_values(mono1)
    assert v1.windows[0].name == "image range"
    w = v1.windows[0]
    np.testing.assert_allclose(window(v1.values, w.center, w.width, w.function), read_image(mono1).pixels, atol=1e-6)
