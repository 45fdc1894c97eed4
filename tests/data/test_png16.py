"""The prepared-image format: encoder, atomic writer, strict reader, and the float -> uint16 rounding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mammodetr.data.image import to_uint16
from mammodetr.data.png16 import encode_png16, read_png16, write_png16


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (37, 20)])
def test_png16_encoder_round_trips_through_pillow(tmp_path, shape):
    values = np.random.default_rng(0).integers(0, 65536, size=shape, dtype=np.uint16)
    values[0, 0], values[-1, -1] = 0, 65535
    path = tmp_path / "x.png"
    path.write_bytes(encode_png16(values))
    with Image.open(path) as im:
        assert im.mode.startswith("I;16") and im.size == (shape[1], shape[0])
        np.testing.assert_array_equal(np.asarray(im), values)


def test_write_then_read_gives_the_same_values(tmp_path):
    values = np.random.default_rng(1).integers(0, 65536, size=(9, 7), dtype=np.uint16)
    path = write_png16(tmp_path / "a.png", values)
    out = read_png16(path)
    assert out.dtype == np.uint16 and out.shape == (9, 7)
    np.testing.assert_array_equal(out, values)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_png16(tmp_path / "a.png", np.zeros((2, 2), np.uint16))
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("mammodetr.atomic.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_png16(path, np.ones((2, 2), np.uint16))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_an_8_bit_grayscale_png_is_scaled_to_16_bits(tmp_path):
    values = np.array([[0, 1, 128, 255]], np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "g8.png")
    out = read_png16(tmp_path / "g8.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, values.astype(np.uint16) * 257)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "1"])
def test_anything_but_8_or_16_bit_grayscale_is_refused(tmp_path, mode):
    path = tmp_path / f"{mode}.png"
    Image.new(mode, (4, 3)).save(path)
    with pytest.raises(ValueError, match=rf"{mode}\.png: expected a grayscale 8- or 16-bit PNG, got mode {mode} "):
        read_png16(path)


def test_a_4_bit_grayscale_png_is_refused(tmp_path):
    path = tmp_path / "g4.png"
    Image.fromarray(np.array([[0, 255]], np.uint8), mode="L").save(path, bits=4)
    with Image.open(path) as im:  # Pillow shows it as 8-bit "L": only the header knows
        assert im.mode == "L"
    with pytest.raises(ValueError, match="expected a grayscale 8- or 16-bit PNG"):
        read_png16(path)


def test_a_file_that_is_not_a_png_is_refused(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(path, format="TIFF")
    with pytest.raises(ValueError, match="expected a grayscale 8- or 16-bit PNG, got TIFF mode L"):
        read_png16(path)


def test_to_uint16_clips_and_rounds_half_up():
    x = np.array([-0.5, 0.0, 1.0 / 65535, 0.25, 0.5, 1.0, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(to_uint16(x), [0, 0, 1, 16384, 32768, 65535, 65535])  # 0.5 -> 32767.5 -> up
    assert to_uint16(np.zeros((2, 3), np.float64)).dtype == np.uint16
    np.testing.assert_array_equal(to_uint16(np.arange(65536) / 65535.0), np.arange(65536))
