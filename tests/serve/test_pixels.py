"""Pixels for the browser: the default window, applied in 16-bit units as viewer.js does, gives the reader's image."""

import numpy as np
import pytest

from mammodetr.data.image import to_uint16
from mammodetr.data.io import read_image
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.serve.pixels import display_pixels

pytest.importorskip("pydicom")


def browser_window(u16: np.ndarray, win: dict) -> np.ndarray:
    """viewer.js's window, written out again: exact linear (x - c) / w + 0.5, or DICOM's sigmoid."""
    x = u16.astype(np.float64)
    if win["function"] == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - win["center"]) / win["width"]))
    return np.clip((x - win["center"]) / win["width"] + 0.5, 0.0, 1.0)


def breast(h=60, w=48, side="L") -> np.ndarray:
    """A bright half-disc against one vertical edge, plus a gradient so windows matter."""
    yy, xx = np.mgrid[0:h, 0:w]
    xs = xx if side == "L" else w - 1 - xx
    inside = ((yy - h / 2) / (0.45 * h)) ** 2 + (xs / (0.8 * w)) ** 2 < 1
    return to_uint16(np.where(inside, 0.3 + 0.6 * yy / h, 0.02).astype(np.float32))


@pytest.mark.parametrize("variant", ["mono2", "mono1", "window", "mono1_window", "sigmoid"])
def test_default_window_reproduces_the_reader(tmp_path, variant):
    from mammodetr.data.synth import make_dicom_dataset, write_dicom

    path = write_dicom(tmp_path / "x.dcm", make_dicom_dataset(breast(), variant=variant, laterality="L", view="CC"))
    pix = display_pixels(path, PrepareOptions(), laterality="L", max_side=4096)
    assert pix.pixels_u16.dtype == np.uint16 and pix.original_hw == (60, 48)
    np.testing.assert_allclose(browser_window(pix.pixels_u16, pix.windows[0]), read_image(path).pixels, atol=2e-4)
    assert pix.windows[-1]["name"] == "full range" and not pix.flip


def test_values_beyond_16_bits_are_scaled_and_windows_follow(tmp_path):
    from mammodetr.data.synth import make_dicom_dataset, write_dicom

    ds = make_dicom_dataset(breast(), variant="mono2", laterality="L", view="CC")
    ds.RescaleSlope, ds.RescaleIntercept = 3, -5000  # modality values span ~196000
    ds.WindowCenter, ds.WindowWidth = 60000, 90000
    path = write_dicom(tmp_path / "x.dcm", ds)
    pix = display_pixels(path, PrepareOptions(), laterality="L", max_side=4096)
    assert pix.scale < 1 and pix.pixels_u16.max() == 65535
    np.testing.assert_allclose(browser_window(pix.pixels_u16, pix.windows[0]), read_image(path).pixels, atol=1e-4)


def test_png_and_downscale(tmp_path):
    from mammodetr.data.png16 import write_png16

    path = tmp_path / "R_CC.png"
    write_png16(path, breast(200, 160, side="L"))  # a right breast stored with its chest wall on the left
    pix = display_pixels(path, PrepareOptions(), laterality="R", max_side=50)
    assert pix.pixels_u16.shape == (50, 40) and pix.original_hw == (200, 160)
    assert pix.chest_wall == "L" and pix.flip  # mirrored so its chest wall meets the left breast's
    full = display_pixels(path, PrepareOptions(), laterality="R", max_side=4096)
    np.testing.assert_allclose(browser_window(full.pixels_u16, full.windows[0]), read_image(path).pixels, atol=1e-5)


@pytest.mark.parametrize("laterality, orientation, flip", [("R", ["P", "L"], False), ("R", ["A", "F"], True),
                                                          ("L", ["A", "R"], False), ("L", ["P", "F"], True)])
def test_patient_orientation_decides_the_flip(tmp_path, laterality, orientation, flip):
    from mammodetr.data.synth import make_dicom_dataset, write_dicom

    ds = make_dicom_dataset(breast(), variant="mono2")
    ds.PatientOrientation = orientation
    path = write_dicom(tmp_path / "x.dcm", ds)
    assert display_pixels(path, PrepareOptions(), laterality=laterality).flip is flip
