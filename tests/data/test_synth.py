"""Synthetic mammograms: determinism, table schema, exact boxes, laterality, every DICOM variant read back."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from mammodetr.data.crop import breast_side, find_breast
from mammodetr.data.image import to_uint16
from mammodetr.data.io import check_laterality, read_image
from mammodetr.data.synth import (
    DICOM_VARIANTS,
    TABLE_COLUMNS,
    LesionSpec,
    SynthOptions,
    generate_dataset,
    make_dicom_dataset,
    powerlaw_noise,
    render_mammogram,
    write_dicom,
)

SIZE = (96, 80)


def read_table(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_png_is_deterministic_and_follows_the_schema(tmp_path):
    a = generate_dataset(tmp_path / "a", n_patients=4, image_size=SIZE, fmt="png", seed=7, progress=False)
    b = generate_dataset(tmp_path / "b", n_patients=4, image_size=SIZE, fmt="png", seed=7, progress=False)
    c = generate_dataset(tmp_path / "c", n_patients=4, image_size=SIZE, fmt="png", seed=8, progress=False)
    assert a.read_text() == b.read_text()
    rows = read_table(a)
    assert tuple(rows[0].keys()) == TABLE_COLUMNS
    images = sorted({r["image_path"] for r in rows})
    assert len(images) == 16  # four views per patient
    for rel in images:
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
        assert "SYN" not in rel  # no patient id in file names
    assert any((a.parent / rel).read_bytes() != (c.parent / rel).read_bytes() for rel in images)
    per_patient = {}
    for r in rows:
        per_patient.setdefault(r["patient_id"], set()).add((r["laterality"], r["view"]))
        assert r["label"] in ("normal", "benign", "malignant")
        if r["x1"]:
            x1, y1, x2, y2 = (int(r[k]) for k in ("x1", "y1", "x2", "y2"))
            assert 0 <= x1 < x2 <= SIZE[1] and 0 <= y1 < y2 <= SIZE[0]
            assert r["lesion_label"] in ("benign", "malignant") and r["label"] != "normal"
        else:
            assert r["label"] == "normal" and r["lesion_label"] == ""
    assert all(v == {("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")} for v in per_patient.values())
    # Images are 16-bit and read back exactly.
    loaded = read_image(a.parent / images[0])
    assert loaded.meta["bits"] == 16
    manifest = json.loads((a.parent / "synth_manifest.json").read_text())
    assert len(manifest["images"]) == 16


def test_patient_does_not_depend_on_dataset_size(tmp_path):
    small = generate_dataset(tmp_path / "s", n_patients=1, image_size=SIZE, seed=3, progress=False)
    large = generate_dataset(tmp_path / "l", n_patients=3, image_size=SIZE, seed=3, progress=False)
    first = [r for r in read_table(large) if r["patient_id"] == "SYN0001"]
    assert first == read_table(small)


@pytest.mark.parametrize("kind", ["circumscribed", "spiculated", "calcifications"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_box_is_the_rendered_lesion(kind, laterality):
    opts = SynthOptions(noise=0.0)
    spec = LesionSpec(kind, 0.5, 0.1, 0.16, 0.3, seed=11)
    args = dict(view="CC", laterality=laterality, density=0.4, options=opts)
    with_lesion = render_mammogram(np.random.default_rng(5), (160, 128), lesions=[spec], **args)
    without = render_mammogram(np.random.default_rng(5), (160, 128), **args)
    diff = with_lesion.pixels.astype(np.float64) - without.pixels
    assert (diff >= -1e-7).all()
    (x1, y1, x2, y2), = with_lesion.boxes_xyxy_px.tolist()
    # The lesion's mass of added intensity lies in its box; the outside gets only blur tails.
    inside = diff[y1:y2, x1:x2].sum()
    assert inside > 0.97 * diff.sum()
    # And the box is tight: each edge row/column of the box carries lesion signal.
    strong = diff > 0.02
    assert strong[y1, x1:x2].any() and strong[y2 - 1, x1:x2].any()
    assert strong[y1:y2, x1].any() and strong[y1:y2, x2 - 1].any()
    assert with_lesion.lesion_labels == [spec.pathology]


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_breast_side_crop_and_laterality_agree(view):
    for i, lat in enumerate(["L", "R", "L", "R"]):
        img = render_mammogram(np.random.default_rng(i), SIZE, view=view, laterality=lat, density=0.2 + 0.2 * i)
        assert breast_side(img.pixels) == lat
        res = find_breast(img.pixels)
        assert not res.fallback, res.reason
        ys, xs = np.nonzero(img.breast_mask)
        x1, y1, x2, y2 = res.box_xyxy
        # The crop keeps (nearly) all breast pixels.
        kept = ((xs >= x1) & (xs < x2) & (ys >= y1) & (ys < y2)).mean()
        assert kept > 0.99


@pytest.mark.parametrize("variant", DICOM_VARIANTS)
def test_every_dicom_variant_reads_back(tmp_path, variant):
    img = render_mammogram(np.random.default_rng(2), SIZE, view="MLO", laterality="R", density=0.5)
    values = to_uint16(img.pixels)
    p = write_dicom(tmp_path / "v.dcm", make_dicom_dataset(values, variant=variant, laterality="R", view="MLO"))
    loaded = read_image(p)
    assert (loaded.laterality, loaded.view) == ("R", "MLO")
    assert check_laterality(loaded) is None
    assert not find_breast(loaded.pixels).fallback
    x = values / 65535.0
    want = {
        "mono2": x,  # the marker pins max=1, the background min=0: min-max is the identity
        "mono1": x,
        "window": np.clip(x / 0.95, 0, 1),
        "mono1_window": np.clip(x / 0.95, 0, 1),
        "sigmoid": 1 / (1 + np.exp(-4 * (x * 65535 - round(0.45 * 65535, 1)) / 65535)),
    }[variant]
    np.testing.assert_allclose(loaded.pixels, want, atol=1e-4)


def test_generate_dicom_with_tags(tmp_path):
    table = generate_dataset(tmp_path, n_patients=1, image_size=SIZE, fmt="dicom", seed=1, progress=False)
    for r in read_table(table):
        loaded = read_image(table.parent / r["image_path"])
        assert (loaded.laterality, loaded.view) == (r["laterality"], r["view"])
        assert check_laterality(loaded) is None


def test_powerlaw_noise_spectrum_slope():
    n = powerlaw_noise(np.random.default_rng(0), (128, 128), beta=3.0)
    assert abs(float(n.mean())) < 1e-5 and abs(float(n.std()) - 1) < 1e-4
    p = np.abs(np.fft.fft2(n)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128)))
    sel = (f > 0.02) & (f < 0.4)
    slope = np.polyfit(np.log(f[sel]), np.log(p[sel]), 1)[0]
    assert -3.4 < slope < -2.6


def test_cli_synth(tmp_path):
    from mammodetr.cli import main

    code = main(["synth", "--out", str(tmp_path / "o"), "--patients", "1", "--size", "64", "52",
                 "--format", "dicom", "--seed", "2", "--no-progress"])
    assert code == 0
    assert len(list((tmp_path / "o" / "images").glob("*.dcm"))) == 4
    assert main(["synth", "--out", str(tmp_path / "p"), "--patients", "0", "--no-progress"]) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        generate_dataset(tmp_path, n_patients=1, fmt="jpg")
    with pytest.raises(ValueError, match="jpeg2000"):
        generate_dataset(tmp_path, n_patients=1, fmt="png", jpeg2000=True)


@pytest.mark.parametrize("marker", ["letter", "square"])
@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("side", ["far", "top", "bottom"])
def test_artefacts_leave_the_breast_alone(marker, laterality, side):
    args = dict(view="MLO", laterality=laterality, density=0.5)
    plain = render_mammogram(np.random.default_rng(4), (256, 208), options=SynthOptions(
        film_edge=0.0, label_block=0.0, marker="none"), **args)
    img = render_mammogram(np.random.default_rng(4), (256, 208), options=SynthOptions(
        film_edge=1.0, film_edge_sides=(side,), label_block=1.0, marker=marker), **args)
    assert img.artefacts == {"film_edge": True, "film_edge_side": side, "label_block": True, "marker": marker}
    art = img.artefact_mask
    assert not (art & img.breast_mask).any()
    np.testing.assert_array_equal(img.pixels[~art], plain.pixels[~art])  # the breast does not depend on them
    assert not plain.artefact_mask.any() and plain.artefacts["marker"] == "none"
    assert img.pixels.max() == 1.0  # the marker pins the maximum
    # The film edge runs the whole border, brighter than the breast's background.
    far_col = 207 if laterality == "L" else 0
    border = {"far": (slice(None), far_col), "top": (0, slice(None)), "bottom": (255, slice(None))}[side]
    assert art[border].all() and (img.pixels[border] > 0.4).all()
    # An MLO breast reaches the top and the bottom: a band there crosses it, and the breast mask gives those
    # pixels up; the far border never touches it.
    assert bool(plain.breast_mask[border].any() and not img.breast_mask[border].any()) is (side != "far")
    # Marker and label block lie on the side away from the chest wall; the label holds dark letters in a bright
    # block, in the lower half, clear of the breast.
    far = slice(104, 208) if laterality == "L" else slice(0, 104)
    band = np.zeros_like(art)
    band[border] = True
    band = ndimage.binary_propagation(band, mask=art)  # marker and label stand apart from the band
    others = art & ~band
    assert others[:, far].sum() == others.sum()
    rows = np.flatnonzero(others[128:, far].any(axis=1))
    block = img.pixels[128:][rows][:, far][others[128:][rows][:, far]]
    assert (block > 0.7).mean() > 0.5 and (block < 0.2).sum() >= 10
    grown = ndimage.binary_dilation(others[128:], iterations=6)
    assert not (grown & img.breast_mask[128:]).any()


def test_a_film_edge_never_crosses_a_lesion_box(tmp_path):
    lesion = [LesionSpec("circumscribed", 0.2, -3.0, 0.2, 0.2, seed=1)]  # at the top of the axillary tail
    img = render_mammogram(np.random.default_rng(0), (256, 208), view="MLO", laterality="L", density=0.4,
                           lesions=lesion, options=SynthOptions(film_edge=1.0, film_edge_sides=("top",)))
    assert len(img.boxes_xyxy_px) == 1 and img.boxes_xyxy_px[0, 1] < 0.04 * 256
    assert img.artefacts["film_edge_side"] == "far"  # moved away from the box
    x1, y1, x2, y2 = img.boxes_xyxy_px[0]
    assert not img.artefact_mask[y1:y2, x1:x2].any()
    with pytest.raises(ValueError, match="film_edge_sides"):
        generate_dataset(tmp_path, n_patients=1, options=SynthOptions(film_edge_sides=("left",)))


def test_artefact_bias_ties_artefacts_to_malignant_patients(tmp_path):
    opts = SynthOptions(film_edge=0.5, label_block=0.5, artefact_bias=1.0)
    generate_dataset(tmp_path, n_patients=8, image_size=(128, 104), seed=5, options=opts, progress=False)
    manifest = json.loads((tmp_path / "synth_manifest.json").read_text())["images"]
    table = read_table(tmp_path / "table.csv")
    malignant_patients = {r["patient_id"] for r in table if r["label"] == "malignant"}
    by_path = {r["image_path"]: r["patient_id"] in malignant_patients for r in table}
    assert 0 < sum(by_path.values()) < len(by_path)
    for entry in manifest:
        malignant = by_path[entry["image_path"]]
        assert entry["artefacts"]["film_edge"] is malignant
        assert entry["artefacts"]["label_block"] is malignant or not entry["artefacts"]["label_block"]
    with pytest.raises(ValueError, match="artefact_bias"):
        generate_dataset(tmp_path / "x", n_patients=1, options=SynthOptions(artefact_bias=2.0), progress=False)
