"""Grad-CAM localisation scores: the pointing game and the CAM energy inside the boxes."""

import numpy as np
import pytest
import torch

from mammodetr.config import RunConfig
from mammodetr.data.ground_truth import load_split
from mammodetr.evaluation.evaluate import evaluate_checkpoint
from mammodetr.evaluation.localisation import energy_in_boxes, localisation_scores, pointing_game_hit
from mammodetr.inference.predictor import Predictor
from mammodetr.metrics.scoring import EvaluationOptions

from ._synthetic import make_prepared_dataset


def _config(size, letterbox=False):
    cfg = RunConfig()
    cfg.data.image_size, cfg.data.letterbox = size, letterbox
    return cfg


def test_pointing_game_and_energy_hand_made():
    cam = np.zeros((10, 10), np.float32)
    cam[2, 3] = 1.0
    cam[8, 8] = 0.5
    box = np.array([[2, 1, 5, 4]])  # covers pixel (row 2, col 3) only among the non-zero ones
    assert pointing_game_hit(cam, box)
    assert not pointing_game_hit(cam, np.array([[6, 6, 10, 10]]))
    assert energy_in_boxes(cam, box) == pytest.approx(1.0 / 1.5)


class _BrightnessModel(torch.nn.Module):
    """Toy model whose malignant logit is the mean of a positive 1x1 projection: Grad-CAM must peak where the
    image is bright. Follows the output contract (image_logits, pred_boxes, pred_obj_logits)."""

    def __init__(self):
        super().__init__()
        conv = torch.nn.Conv2d(1, 4, 1)
        torch.nn.init.constant_(conv.weight, 0.5)
        torch.nn.init.zeros_(conv.bias)
        self.projections = torch.nn.ModuleList([conv])

    def forward(self, x):
        f = self.projections[-1](x)
        logit = f.mean(dim=(1, 2, 3))
        b = x.shape[0]
        return {"image_logits": torch.stack([-logit, logit], 1), "pred_boxes": torch.full((b, 3, 4), 0.5),
                "pred_obj_logits": torch.zeros(b, 3), "aux_outputs": []}


@pytest.mark.parametrize("letterbox", [True, False])
def test_localisation_scores_find_a_planted_bright_lesion(tmp_path, letterbox):
    from PIL import Image


    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(96, 48))
    images = load_split(data, "test")
    for im in images:
        pix = np.full((96, 48), 3000, np.uint16)
        if len(im.boxes_xyxy_px):
            x1, y1, x2, y2 = np.round(im.boxes_xyxy_px[0]).astype(int)
            pix[y1:y2, x1:x2] = 60000
        Image.fromarray(pix).save(data / im.file_name)
    model = _BrightnessModel().train()
    res = localisation_scores(Predictor(model, _config(64, letterbox)), data, images, n_overlays=1)
    s = res.summary
    assert s["n_images"] == sum(len(im.boxes_xyxy_px) > 0 for im in images)
    assert s["pointing_game"] == 1.0
    assert s["energy_in_box"] > 2 * s["box_area_fraction"]
    assert model.training and len(res.overlays) == 1


def test_evaluate_in_memory_model_reports_gradcam_in_meta(tmp_path):
    import json

    from PIL import Image


    data = make_prepared_dataset(tmp_path / "ds", n_patients=3, size_hw=(64, 64))
    for im in load_split(data, "test"):
        pix = np.full((64, 64), 3000, np.uint16)
        for x1, y1, x2, y2 in np.round(im.boxes_xyxy_px).astype(int):
            pix[y1:y2, x1:x2] = 60000
        Image.fromarray(pix).save(data / im.file_name)
    evaluate_checkpoint(Predictor(_BrightnessModel(), _config(32)), data, tmp_path / "ev",
                        EvaluationOptions(n_bootstrap=0), report=False)
    g = json.loads((tmp_path / "ev" / "metrics.json").read_text())["meta"]["gradcam"]
    assert g["pointing_game"] == 1.0 and g["file"] == "gradcam.json"
    assert (tmp_path / "ev" / "predictions.jsonl").is_file()
