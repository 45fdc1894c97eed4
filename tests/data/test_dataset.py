"""MammoDataset over a hand-written prepared folder: targets, geometry, augmentation, cache, leakage."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mammodetr.data.boxes import box_cxcywh_to_xyxy
from mammodetr.data.dataset import MammoDataset, collate
from mammodetr.data.model_input import InputGeometry, input_transform
from mammodetr.data.split import LeakageError

S = 64
SIZES = [(120, 90), (100, 100), (80, 120), (130, 70)]
BOXES = [[20, 30, 40, 50], [10, 10, 30, 26], [60, 20, 90, 44], [5, 80, 25, 110]]


@pytest.fixture()
def prepared(tmp_path):
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i, ((h, w), box) in enumerate(zip(SIZES, BOXES), start=1):
        img = np.full((h, w), 0.3, np.float32)
        x1, y1, x2, y2 = box
        img[y1:y2, x1:x2] = 1.0
        Image.fromarray((img * 65535).astype(np.uint16)).save(tmp_path / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"images/{i}.png", "width": w, "height": h,
                       "patient_id": f"p_{(i + 1) // 2}", "label": ["malignant", "benign"][i % 2],
                       "split": "train" if i <= 2 else "val"})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "pathology": [None, "malignant", "benign", "malignant"][i - 1]})
    (tmp_path / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns}))
    return tmp_path


def _bbox(img, thr=0.65):
    ys, xs = np.nonzero(img[0].numpy() > thr)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


def test_targets_plain_resize(prepared):
    ds = MammoDataset(prepared, None, image_size=S, cache=False)
    assert len(ds) == 4
    for i in range(4):
        image, t = ds[i]
        h, w = SIZES[i]
        assert image.shape == (1, S, S) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        x1, y1, x2, y2 = BOXES[i]
        expected = torch.tensor([[(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]])
        torch.testing.assert_close(t["boxes_cxcywh"], expected)
        np.testing.assert_allclose(_bbox(image), (box_cxcywh_to_xyxy(expected) * S)[0].numpy(), atol=1.5)
        assert t["orig_size_hw"].tolist() == [h, w]
        assert t["label"].dtype == torch.int64 and t["label"].ndim == 0
        assert t["image_id"] == i + 1 and t["file_name"] == f"images/{i + 1}.png"
    assert [ds[i][1]["box_malignant"].tolist() for i in range(4)] == [[-1], [1], [0], [1]]
    assert ds.labels == [0, 1, 0, 1] and ds.patient_ids == ["p_1", "p_1", "p_2", "p_2"]


def test_letterbox_and_mapping_back(prepared):
    ds = MammoDataset(prepared, None, image_size=S, letterbox=True, cache=False)
    for i in range(4):
        image, t = ds[i]
        to_input = input_transform(tuple(t["orig_size_hw"].tolist()), InputGeometry(S, letterbox=True))
        back = to_input.invert_boxes_xyxy(box_cxcywh_to_xyxy(t["boxes_cxcywh"]).double().numpy() * S)
        np.testing.assert_allclose(back[0], BOXES[i], atol=1e-3)
        np.testing.assert_allclose(_bbox(image), (box_cxcywh_to_xyxy(t["boxes_cxcywh"]) * S)[0].numpy(),
                                   atol=1.5)
    image, _ = ds[3]  # 130 x 70: padded left and right with zeros
    assert float(image[0, :, 0].max()) == 0.0 and float(image[0, :, -1].max()) == 0.0


def test_light_augmentation_keeps_boxes_consistent(prepared):
    ds = MammoDataset(prepared, None, image_size=S, augment="light", seed=3, cache=False)
    for _ in range(3):
        for i in range(4):
            image, t = ds[i]
            if t["boxes_cxcywh"].shape[0] == 0:
                continue
            assert t["box_malignant"].shape[0] == t["boxes_cxcywh"].shape[0]
            box_px = (box_cxcywh_to_xyxy(t["boxes_cxcywh"]) * S)[0].numpy()
            # the lesion (brightest pixels) sits where the box says
            bright = image[0].numpy() > image[0].numpy().max() - 0.1
            ys, xs = np.nonzero(bright)
            np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box_px, atol=2.0)


def test_splits_leakage_and_errors(prepared):
    assert [t["image_id"] for _, t in MammoDataset(prepared, "train", image_size=S, cache=False)] == [1, 2]
    assert len(MammoDataset(prepared, "test", image_size=S, cache=False)) == 0
    with pytest.raises(ValueError, match="unknown augmentation preset 'heavy'; choose one of none, light, strong"):
        MammoDataset(prepared, "train", augment="heavy")
    data = json.loads((prepared / "annotations.json").read_text())
    data["images"][1]["split"] = "test"  # p_1 now in train and test
    (prepared / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(LeakageError, match="patient p_1 in test, train"):
        MammoDataset(prepared, "train")
    for img in data["images"]:
        img["split"] = None
    (prepared / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no split assigned; run `mammodetr split"):
        MammoDataset(prepared, "train")
    with pytest.raises(ValueError, match="written by `mammodetr prepare`"):
        MammoDataset(prepared / "missing", None)


def test_cache_gives_identical_images(prepared, tmp_path):
    uncached = MammoDataset(prepared, None, image_size=S, cache=False)
    cached = MammoDataset(prepared, None, image_size=S, cache_dir=tmp_path / "c")
    first = [cached[i][0] for i in range(4)]
    assert len(list((tmp_path / "c" / f"{S}_plain").glob("*.npy"))) == 4
    again = MammoDataset(prepared, None, image_size=S, cache_dir=tmp_path / "c")
    for i in range(4):
        assert torch.equal(first[i], uncached[i][0])
        assert torch.equal(again[i][0], first[i])


def test_collate_and_augmentation_keyed_on_seed_epoch_index(prepared):
    ds = MammoDataset(prepared, None, image_size=S, augment="light", seed=0, cache=False)
    images, targets = collate([ds[0], ds[1], ds[2]])
    assert images.shape == (3, 1, S, S) and len(targets) == 3
    # the same (seed, epoch, index) gives the same augmentation in any worker layout
    in_process = [ds[i][0] for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate)
    for a, (b, _) in zip(in_process, loader):
        assert torch.equal(a, b[0])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], in_process[0])  # a new epoch draws new augmentations
    other_seed = MammoDataset(prepared, None, image_size=S, augment="light", seed=1, cache=False)
    assert not torch.equal(other_seed[0][0], in_process[0])
