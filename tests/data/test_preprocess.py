"""read -> breast crop -> side flip -> size cap, with the transform mapping lesions correctly."""

import numpy as np
import pytest
from PIL import Image

from mammodetr.data.preprocess import PrepareOptions, capped_size_hw, preprocess_image

H, W = 240, 180
LESION = (30, 100, 46, 116)  # x1, y1, x2, y2 of a bright square inside the breast


def _breast(side="L"):
    """A half-ellipse 'breast' against the left (or right) edge plus a bright square lesion."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W), np.float32)
    img[(xx / 110.0) ** 2 + ((yy - 120) / 95.0) ** 2 < 1] = 0.45
    x1, y1, x2, y2 = LESION
    img[y1:y2, x1:x2] = 1.0
    return img if side == "L" else img[:, ::-1].copy()


def _png(path, img):
    Image.fromarray((np.clip(img, 0, 1) * 65535 + 0.5).astype(np.uint16)).save(path)
    return path


def _dicom(path, img, laterality=None):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    fm = FileMetaDataset()
    fm.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    fm.MediaStorageSOPInstanceUID = generate_uid()
    fm.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = fm
    ds.SOPClassUID = fm.MediaStorageSOPClassUID
    ds.SOPInstanceUID = fm.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    if laterality:
        ds.ImageLaterality = laterality
    ds.ViewPosition = "CC"
    ds.Rows, ds.Columns = img.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.clip(img, 0, 1) * 65535 + 0.5).astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def _lesion_bbox(pixels, thr=0.8):
    ys, xs = np.nonzero(pixels > thr)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@pytest.mark.parametrize("flip_to", [None, "L", "R"])
def test_transform_maps_lesion_to_prepared_pixels(tmp_path, flip_to):
    path = _png(tmp_path / "a.png", _breast("L"))
    prep = preprocess_image(path, PrepareOptions(flip_to=flip_to, max_side=120))
    assert prep.transform.input_size_hw == (H, W)
    assert prep.pixels.shape == prep.transform.output_size_hw
    assert max(prep.pixels.shape) == 120
    assert prep.pixels.dtype == np.float32 and 0 <= prep.pixels.min() and prep.pixels.max() <= 1
    assert not prep.crop_fallback
    assert prep.transform.output_size_hw[1] < 120 * W / H  # cropped: the empty right side is gone
    assert prep.transform.flipped == (flip_to == "R")
    mapped = prep.transform.apply_boxes_xyxy([LESION])[0]
    np.testing.assert_allclose(_lesion_bbox(prep.pixels), mapped, atol=1.5)  # resize blurs edges by ~1 px
    np.testing.assert_allclose(prep.transform.invert_boxes_xyxy([mapped])[0], LESION, atol=1e-9)


def test_side_from_tag_or_image(tmp_path):
    """A DICOM tagged R whose breast lies on the left: 'tag' trusts the tag (and flags it), 'image' the pixels."""
    path = _dicom(tmp_path / "a.dcm", _breast("L"), laterality="R")
    by_tag = preprocess_image(path, PrepareOptions(flip_to="R", max_side=None))
    assert by_tag.laterality == "R" and by_tag.view == "CC"
    assert by_tag.breast_side == "L" and by_tag.side_mismatch
    assert not by_tag.transform.flipped
    by_image = preprocess_image(path, PrepareOptions(flip_to="R", side_source="image", max_side=None))
    assert by_image.transform.flipped
    assert not any(op.to_dict()["op"] == "resize" for op in by_image.transform.ops)
    # a table laterality overrides the tag
    by_table = preprocess_image(path, PrepareOptions(flip_to="R", max_side=None), laterality="L")
    assert by_table.laterality == "L" and by_table.transform.flipped and not by_table.side_mismatch


def test_no_crop_keeps_whole_image(tmp_path):
    path = _png(tmp_path / "a.png", _breast("R"))
    prep = preprocess_image(path, PrepareOptions(crop=False, max_side=None))
    assert prep.transform.ops == ()
    np.testing.assert_allclose(prep.pixels, np.asarray(Image.open(path), dtype=np.float32) / 65535, atol=1e-6)


def test_blank_image_falls_back_and_is_recorded(tmp_path):
    path = _png(tmp_path / "blank.png", np.zeros((64, 48), np.float32))
    prep = preprocess_image(path, PrepareOptions(max_side=None))
    assert prep.crop_fallback and prep.crop_reason
    assert prep.pixels.shape == (64, 48)


def test_unreadable_file_raises_image_read_error(tmp_path):
    from mammodetr.data.io import ImageReadError

    bad = tmp_path / "zero.dcm"
    bad.write_bytes(b"")
    with pytest.raises(ImageReadError, match="zero.dcm"):
        preprocess_image(bad)


def test_options_validation_and_round_trip():
    assert PrepareOptions(flip_to="none").flip_to is None
    assert PrepareOptions(flip_to="l").flip_to == "L"
    with pytest.raises(ValueError, match="flip_to"):
        PrepareOptions(flip_to="X")
    with pytest.raises(ValueError, match="side_source"):
        PrepareOptions(side_source="both")
    opts = PrepareOptions(max_side=1024, flip_to="R")
    assert PrepareOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError, match="unknown prepare options: bogus"):
        PrepareOptions.from_dict({"bogus": 1})


def test_masking_options_round_trip_and_legacy_records():
    opts = PrepareOptions(mask_background=False, mask_margin=0.03)
    assert PrepareOptions.from_dict(opts.to_dict()) == opts
    assert PrepareOptions().mask_background is True  # new datasets are masked
    legacy = {k: v for k, v in PrepareOptions().to_dict().items() if not k.startswith("mask_")}
    assert PrepareOptions.from_dict(legacy).mask_background is False  # a record from before masking existed
    # Masking off: the identity is the pre-masking dict, so old datasets keep their options hash.
    assert PrepareOptions.from_dict(legacy).identity() == legacy
    assert PrepareOptions().identity() == PrepareOptions().to_dict()
    with pytest.raises(ValueError, match="mask_margin"):
        PrepareOptions(mask_margin=0.7)


def _synth_with_artefacts(tmp_path, seed, view, laterality):
    from mammodetr.data.synth import LesionSpec, SynthOptions, render_mammogram

    lesions = [LesionSpec("spiculated", 0.55, 0.3, 0.18, 0.3, seed=3), LesionSpec("circumscribed", 0.3, -0.6, 0.14,
                                                                                   0.2, seed=4)]
    img = render_mammogram(np.random.default_rng(seed), (320, 256), view=view, laterality=laterality, density=0.5,
                           lesions=lesions, options=SynthOptions(film_edge=1.0, label_block=1.0))
    return img, _png(tmp_path / f"{seed}{view}{laterality}.png", img.pixels)


@pytest.mark.parametrize("view", ["CC", "MLO"])
@pytest.mark.parametrize("laterality", ["L", "R"])
def test_masking_removes_film_edge_label_and_marker_and_keeps_every_box(tmp_path, view, laterality):
    img, path = _synth_with_artefacts(tmp_path, 7, view, laterality)
    assert img.artefacts["film_edge"] and img.artefacts["label_block"] and len(img.boxes_xyxy_px) == 2
    original = np.asarray(Image.open(path), dtype=np.float32) / 65535
    boxes = img.boxes_xyxy_px.tolist()
    prep = preprocess_image(path, PrepareOptions(crop=False, max_side=None), keep_boxes_xyxy=boxes)
    assert prep.transform.ops == ()  # same pixels grid: compare directly
    assert (prep.pixels[img.artefact_mask] == 0).all() and (original[img.artefact_mask] > 0).any()
    np.testing.assert_array_equal(prep.pixels[img.breast_mask], original[img.breast_mask])
    for x1, y1, x2, y2 in boxes:
        np.testing.assert_array_equal(prep.pixels[y1:y2, x1:x2], original[y1:y2, x1:x2])
    record = prep.background_mask
    assert record["applied"] and record["boxes_outside_mask"] == 0 and record["reason"] == ""
    # Everything but the breast and a margin is masked: at least the artefacts, at most all but the breast.
    assert img.artefact_mask.mean() < record["fraction"] <= 1 - img.breast_mask.mean()
    assert record["fraction"] > 1 - img.breast_mask.mean() - 0.08
    off = preprocess_image(path, PrepareOptions(crop=False, max_side=None, mask_background=False))
    assert off.background_mask is None
    np.testing.assert_array_equal(off.pixels, original)


def test_a_box_reaching_outside_the_breast_is_never_cut(tmp_path):
    img, path = _synth_with_artefacts(tmp_path, 8, "CC", "L")
    original = np.asarray(Image.open(path), dtype=np.float32) / 65535
    # A (mislabelled or edge) box from inside the breast across the film edge and the label block.
    box = [100.0, 250.5, 255.2, 318.0]
    prep = preprocess_image(path, PrepareOptions(crop=False, max_side=None), keep_boxes_xyxy=[box])
    np.testing.assert_array_equal(prep.pixels[250:318, 100:256], original[250:318, 100:256])
    assert prep.background_mask["boxes_outside_mask"] == 1
    assert (prep.pixels[:250][img.artefact_mask[:250]] == 0).all()  # the rest of the artefacts still go
    # Bad boxes are ignored here (prepare reports them).
    prep = preprocess_image(path, PrepareOptions(crop=False, max_side=None),
                            keep_boxes_xyxy=[[float("nan"), 0, 5, 5], [10, 10, 10, 20]])
    assert prep.background_mask["boxes_outside_mask"] == 0


def test_masked_fraction_is_of_the_prepared_crop(tmp_path):
    img, path = _synth_with_artefacts(tmp_path, 9, "MLO", "R")
    cropped = preprocess_image(path, PrepareOptions(max_side=None))
    whole = preprocess_image(path, PrepareOptions(crop=False, max_side=None))
    assert 0 < cropped.background_mask["fraction"] < whole.background_mask["fraction"] < 1
    assert cropped.background_mask["fraction"] <= float((cropped.pixels == 0).mean())  # masked pixels are 0


def test_capped_size():
    assert capped_size_hw((3000, 2400), 2048) == (2048, 1638)
    assert capped_size_hw((100, 80), 2048) == (100, 80)
    assert capped_size_hw((100, 80), None) == (100, 80)
