"""Non-DICOM readers (PNG, TIFF, PGM, JPEG), format sniffing, errors and the laterality check."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from mammodetr.data.dicom import read_dicom
from mammodetr.data.io import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    LoadedImage,
    check_laterality,
    read_image,
    sniff_path,
)
from mammodetr.data.preprocess import PrepareOptions


def ramp(h: int = 20, w: int = 16, top: int = 255) -> np.ndarray:
    a = np.linspace(0, top, h * w).round().reshape(h, w)
    return a


def test_png_8bit(tmp_path):
    a = ramp().astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    assert loaded.pixels.dtype == np.float32 and loaded.pixels.shape == a.shape
    np.testing.assert_allclose(loaded.pixels, a / 255.0, atol=1e-7)
    assert loaded.meta["bits"] == 8 and loaded.laterality is None and loaded.view is None


def test_png_16bit(tmp_path):
    a = ramp(top=65535).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    loaded = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(loaded.pixels, a / 65535.0, atol=1e-7)
    assert loaded.meta["bits"] == 16


def test_png_rgb_becomes_luminance(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    loaded = read_image(tmp_path / "c.png")
    want = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    np.testing.assert_allclose(loaded.pixels, want, atol=1.5 / 255)


def test_png_4bit_grey_scaled_by_bit_depth(tmp_path):
    a = (np.arange(16).reshape(4, 4)).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "g4.png", bits=4)
    with open(tmp_path / "g4.png", "rb") as fh:
        assert fh.read(26)[24] == 4  # really written as a 4-bit PNG
    np.testing.assert_allclose(read_image(tmp_path / "g4.png").pixels, a / 15.0, atol=1e-7)


def test_tiff_16bit_and_float_and_miniswhite(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = ramp(top=65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a)
    np.testing.assert_allclose(read_image(tmp_path / "a.tif").pixels, a / 65535.0, atol=1e-7)
    f = (ramp() / 255.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", f)
    np.testing.assert_allclose(read_image(tmp_path / "f.tif").pixels, f, atol=1e-7)
    b = ramp().astype(np.uint8)
    tifffile.imwrite(tmp_path / "w.tif", b, photometric="miniswhite")
    np.testing.assert_allclose(read_image(tmp_path / "w.tif").pixels, 1.0 - b / 255.0, atol=1e-7)
    tifffile.imwrite(tmp_path / "m.tif", np.stack([b, b[::-1]]), photometric="minisblack")
    with pytest.raises(ImageReadError, match="multi-page"):
        read_image(tmp_path / "m.tif")
    np.testing.assert_allclose(read_image(tmp_path / "m.tif", frame=1).pixels, b[::-1] / 255.0, atol=1e-7)


def write_pgm(path, a: np.ndarray, maxval: int, comment: bool = False) -> None:
    header = b"P5\n" + (b"# made by a test\n" if comment else b"") + f"{a.shape[1]} {a.shape[0]}\n{maxval}\n".encode()
    body = a.astype(">u2" if maxval > 255 else "u1").tobytes()
    path.write_bytes(header + body)


def test_pgm_8bit_with_comment(tmp_path):
    a = ramp().astype(np.uint8)
    write_pgm(tmp_path / "a.pgm", a, 255, comment=True)
    np.testing.assert_allclose(read_image(tmp_path / "a.pgm").pixels, a / 255.0, atol=1e-7)


def test_pgm_16bit_big_endian(tmp_path):
    a = np.array([[258, 0], [1023, 1]], dtype=np.uint16)
    write_pgm(tmp_path / "b.pgm", a, 1023)
    assert (tmp_path / "b.pgm").read_bytes()[-8:-6] == b"\x01\x02"  # 258 stored big-endian
    np.testing.assert_allclose(read_image(tmp_path / "b.pgm").pixels, a / 1023.0, atol=1e-7)


def test_pgm_ascii(tmp_path):
    (tmp_path / "c.pgm").write_bytes(b"P2\n3 2\n# c\n10\n0 5 10\n10 5 0\n")
    np.testing.assert_allclose(read_image(tmp_path / "c.pgm").pixels, [[0, 0.5, 1], [1, 0.5, 0]], atol=1e-7)


def test_pgm_errors(tmp_path):
    a = ramp().astype(np.uint8)
    write_pgm(tmp_path / "t.pgm", a, 255)
    (tmp_path / "t.pgm").write_bytes((tmp_path / "t.pgm").read_bytes()[:-10])
    with pytest.raises(ImageReadError, match="truncated PGM") as e:
        read_image(tmp_path / "t.pgm")
    assert str(e.value).startswith(str(tmp_path / "t.pgm"))
    write_pgm(tmp_path / "v.pgm", a, 100)
    with pytest.raises(ImageReadError, match="exceeds maxval"):
        read_image(tmp_path / "v.pgm")
    (tmp_path / "h.pgm").write_bytes(b"P5\nfoo bar\n")
    with pytest.raises(ImageReadError, match="malformed PGM header"):
        read_image(tmp_path / "h.pgm")


def test_jpeg(tmp_path):
    a = np.zeros((32, 32), np.uint8)
    a[:, 16:] = 200  # block-aligned edges survive JPEG almost exactly
    Image.fromarray(a).save(tmp_path / "a.jpg", quality=95)
    px = read_image(tmp_path / "a.jpg").pixels
    np.testing.assert_allclose(px[:, :14], 0.0, atol=3 / 255)
    np.testing.assert_allclose(px[:, 18:], 200 / 255.0, atol=3 / 255)


def test_format_from_content_not_extension(tmp_path):
    a = ramp().astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "x.dcm", format="PNG")
    loaded = read_image(tmp_path / "x.dcm")
    assert loaded.meta["format"] == "png"


@pytest.mark.parametrize(
    ("content", "name", "reason"),
    [
        (b"", "e.png", "empty file"),
        (b"hello world, this is text" * 10, "t.png", "unrecognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "broken.png", "cannot decode png"),
    ],
)
def test_bad_files(tmp_path, content, name, reason):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ImageReadError) as e:
        read_image(p)
    assert str(e.value).startswith(f"{p}: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_size_cap_and_frame_on_single_image(tmp_path):
    Image.fromarray(ramp().astype(np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError, match="too large"):
        read_image(tmp_path / "a.png", max_pixels=100)
    # a frame number applies to multi-frame files only: a single image is read whatever it says
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", frame=2).pixels, read_image(tmp_path / "a.png").pixels)
    with pytest.raises(ImageReadError, match="non-negative"):
        read_image(tmp_path / "a.png", frame=-1)


def breast_on_left(h: int = 64, w: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (((xx / (0.6 * w)) ** 2 + ((yy - h / 2) / (0.4 * h)) ** 2) < 1).astype(np.float32) * 0.7


def test_check_laterality_convention():
    left = breast_on_left()
    assert check_laterality(LoadedImage(left, "L", "CC")) is None
    assert check_laterality(LoadedImage(left[:, ::-1].copy(), "R", "CC")) is None
    warning = check_laterality(LoadedImage(left, "R", "CC"))
    assert warning and "right" in warning and "left" in warning
    # Patient Orientation overrides the standard-display assumption: 'P' rows put the chest wall right.
    assert check_laterality(LoadedImage(left, "L", "CC", {"patient_orientation": ["P", "L"]})) is not None
    assert check_laterality(LoadedImage(left, "R", "CC", {"patient_orientation": ["A", "L"]})) is None
    assert check_laterality(LoadedImage(left, None, "CC")) is None


def test_sniff_path_names_the_format_and_never_raises(tmp_path):
    Image.fromarray(ramp().astype(np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(ramp().astype(np.uint8)).save(tmp_path / "no_suffix", format="TIFF")
    (tmp_path / "dicom_without_suffix").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 8)
    (tmp_path / "text.dcm").write_text("not an image")
    (tmp_path / "empty").write_bytes(b"")
    assert sniff_path(tmp_path / "a.png") == "png"
    assert sniff_path(tmp_path / "no_suffix") == "tiff"
    assert sniff_path(tmp_path / "dicom_without_suffix") == "dicom"
    assert sniff_path(tmp_path / "text.dcm") is None
    assert sniff_path(tmp_path / "empty") is None
    assert sniff_path(tmp_path / "missing.dcm") is None
    assert sniff_path(tmp_path) is None  # a directory


def test_the_pixel_cap_is_declared_once():
    assert PrepareOptions().max_pixels == DEFAULT_MAX_PIXELS
    for reader in (read_image, read_dicom):
        assert inspect.signature(reader).parameters["max_pixels"].default == DEFAULT_MAX_PIXELS
