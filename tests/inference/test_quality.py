"""quality.py: the warnings a doubtful input carries, from the reader's metadata and the preparation."""

import numpy as np
import pytest

from mammodetr.data.model_input import InputGeometry
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.inputs import load_raw_input
from mammodetr.inference.quality import input_warnings, warning_code


def _codes(path, crop=True):
    raw = load_raw_input(path, PrepareOptions(crop=crop), InputGeometry(64, False))
    return [warning_code(w) for w in input_warnings(raw)]


def _breast(h=200, w=160):
    a = np.zeros((h, w), np.uint16)
    a[20:h - 20, 10:int(0.7 * w)] = 30000 + (np.arange(int(0.7 * w) - 10) * 100).astype(np.uint16)
    return a


def test_an_ordinary_mammogram_has_no_warning(tmp_path):
    from PIL import Image

    Image.fromarray(_breast()).save(tmp_path / "m.png")
    assert _codes(tmp_path / "m.png") == []


@pytest.mark.parametrize("make, expected", [
    (lambda: np.full((200, 160), 7, np.uint16), ["blank_image", "no_breast_found"]),
    (lambda: _breast(60, 200), ["tiny_image"]),
    (lambda: np.stack([_breast() // 256] * 3, axis=2).astype(np.uint8), ["unusual_photometric"]),
])
def test_png_warnings(tmp_path, make, expected):
    from PIL import Image

    Image.fromarray(make()).save(tmp_path / "x.png")
    assert _codes(tmp_path / "x.png") == expected


def test_no_breast_found_only_when_the_preparation_crops(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((200, 160), 7, np.uint16)).save(tmp_path / "x.png")
    assert _codes(tmp_path / "x.png", crop=False) == ["blank_image"]


def test_a_colour_tiff_is_unusual(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "x.tif", np.stack([_breast()] * 3, axis=2), photometric="rgb")
    assert _codes(tmp_path / "x.tif") == ["unusual_photometric"]
